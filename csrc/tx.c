/* TX half of the native core (docs/architecture.md, "The native core").
 *
 * The Python reference is udpnest.gso.segment_tcp (and endpoint/txplan's vnet and checksum handling):
 * every function here produces the same bytes, and rejects with the same Reason name (raised as
 * udpnest._native.Reject(reason_value, detail); udpnest.engine turns it into ParseError).
 *
 *   vnet_check(buf)            -> the 13 vnet header fields, validated as VnetHdr.check does
 *   finish_csum(frame, cs, co) -> bytearray: a CHECKSUM_PARTIAL frame with its checksum finished
 *   segment(prefix, frame, layout, mss, flags) -> (bytearray, row_len, count, last_len): gso.segment_tcp
 *   send_gso(fd, buf, seg, addr) -> sendmsg(UDP_SEGMENT) with the GIL released
 *
 * Policy (peer modes, FDB, fold decisions) stays in Python; these functions transform bytes.  Every
 * offset handed in from Python is checked against the buffer before it is used: a wrong layout is a
 * Reject, never an out-of-bounds read.
 */
#include "udpnest.h"

#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <arpa/inet.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80
#define MAX_IP 8
#define MAX_UDP 8

PyObject *un_Reject; /* udpnest._native.Reject(reason_value, detail) */

static PyObject *reject(const char *reason, const char *fmt, ...)
{
    char detail[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    PyObject *e = Py_BuildValue("(ss)", reason, detail);
    if (e != NULL) {
        PyErr_SetObject(un_Reject, e);
        Py_DECREF(e);
    }
    return NULL;
}

/* ---- vnet header (udpnest.wire.vnet.VnetHdr.check) ---------------------------------------------------- */

#define VNET_HDR_LEN 24
#define F_NEEDS_CSUM 0x01
#define F_DATA_VALID 0x02
#define G_NONE 0x00
#define G_TCPV4 0x01
#define G_UDP 0x03
#define G_TCPV6 0x04
#define G_UDP_L4 0x05
#define G_TUN4 0x20
#define G_TUN6 0x40
#define G_TUN (G_TUN4 | G_TUN6)
#define G_ECN 0x80

static inline uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static PyObject *tx_vnet_check(PyObject *self, PyObject *args)
{
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "y*", &b))
        return NULL;
    const uint8_t *p = b.buf;
    if (b.len < VNET_HDR_LEN) {
        PyBuffer_Release(&b);
        return reject("truncated_vnet", "vnet header: %zd bytes, need %d", b.len, VNET_HDR_LEN);
    }
    unsigned f[13];
    f[0] = p[0];
    f[1] = p[1];
    for (int i = 2; i < 13; i++)
        f[i] = le16(p + 2 * i - 2);
    PyBuffer_Release(&b);
    unsigned fl = f[0], gt = f[1], gso_size = f[3], csum_offset = f[5];
    unsigned csum_start = f[4], outer_th = f[11], inner_nh = f[12];
    unsigned tnl = gt & G_TUN, base = gt & ~(G_ECN | G_TUN) & 0xFF;
    if (tnl == G_TUN)
        return reject("bad_vnet", "gso_type 0x%02x: both UDP_TUNNEL_IPV4 and _IPV6", gt);
    if (!(base == G_NONE || base == G_TCPV4 || base == G_UDP || base == G_TCPV6 || base == G_UDP_L4))
        return reject("bad_vnet", "gso_type 0x%02x: unknown base type 0x%02x", gt, base);
    if (gt != G_NONE && base == G_NONE)
        return reject("bad_vnet", "gso_type 0x%02x: ECN/tunnel bits without a GSO type", gt);
    if (gt != G_NONE && gso_size == 0)
        return reject("bad_vnet", "gso_type 0x%02x with gso_size 0", gt);
    if (base == G_UDP_L4) {
        if (gt & G_ECN)
            return reject("bad_vnet", "gso_type 0x%02x: ECN with UDP_L4", gt);
        if (!(fl & F_NEEDS_CSUM))
            return reject("bad_vnet", "flags 0x%02x: UDP_L4 GSO without NEEDS_CSUM", fl);
        if (csum_offset != 6)
            return reject("bad_vnet", "UDP_L4 GSO with csum_offset %u (not 6)", csum_offset);
    } else if ((base == G_TCPV4 || base == G_TCPV6) && (fl & F_NEEDS_CSUM) && csum_offset != 16) {
        return reject("bad_vnet", "TCP GSO with csum_offset %u (not 16)", csum_offset);
    }
    if (tnl) {
        if (!(base == G_TCPV4 || base == G_TCPV6 || base == G_UDP_L4))
            return reject("bad_vnet", "gso_type 0x%02x: UFO inside a UDP tunnel", gt);
        if (fl & F_DATA_VALID)
            return reject("bad_vnet", "flags 0x%02x: DATA_VALID with UDP tunnel GSO", fl);
        if (!(fl & F_NEEDS_CSUM))
            return reject("bad_vnet", "flags 0x%02x: UDP tunnel GSO without NEEDS_CSUM", fl);
        unsigned outer_min = 14 + (tnl == G_TUN6 ? 40 : 20);
        unsigned inner_min = base == G_TCPV6 ? 40 : 20;
        if (outer_th < outer_min || inner_nh < outer_th + 8 || csum_start < inner_nh + inner_min)
            return reject("bad_vnet", "tunnel offsets outer_th=%u inner_nh=%u csum_start=%u out of order",
                          outer_th, inner_nh, csum_start);
    }
    return Py_BuildValue("(IIIIIIIIIIIII)", f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9],
                         f[10], f[11], f[12]);
}

/* ---- finish a CHECKSUM_PARTIAL frame (endpoint's _finish_csum) ------------------------------------------ */

static PyObject *tx_finish_csum(PyObject *self, PyObject *args)
{
    Py_buffer b;
    unsigned cs, co;
    if (!PyArg_ParseTuple(args, "y*II", &b, &cs, &co))
        return NULL;
    if ((size_t)cs + co + 2 > (size_t)b.len) {
        Py_ssize_t n = b.len;
        PyBuffer_Release(&b);
        return reject("bad_vnet", "csum_start %u + csum_offset %u beyond the frame (%zd)", cs, co, n);
    }
    PyObject *out = PyByteArray_FromStringAndSize(b.buf, b.len);
    PyBuffer_Release(&b);
    if (out == NULL)
        return NULL;
    uint8_t *f = (uint8_t *)PyByteArray_AS_STRING(out);
    size_t n = (size_t)PyByteArray_GET_SIZE(out);
    uint16_t c = un_csum(un_sum(f + cs, n - cs, 0));
    if (c == 0 && co == 6)
        c = 0xFFFF;
    un_put16(f + cs + co, c);
    return out;
}

/* ---- segmentation (gso.segment_tcp) -------------------------------------------------------------------- */

struct layout {
    unsigned ip4[MAX_IP], n4, ip6[MAX_IP], n6, udp[MAX_UDP], udp_has[MAX_UDP], nu;
    unsigned tcp_ip, tcp_ip_v6, tcp, hdr_len, l4;
};

#define SEG_FIX_IP_IDS 1      /* IPv4 IDs +1 per segment even with DF (the kernel's GSO does) */
#define SEG_FIXED_NESTED_IDS 2 /* nested (non-innermost) IPv4 IDs fixed: GSO-partial-shaped trains */

static int parse_offsets(PyObject *seq, unsigned *out, unsigned *has, unsigned max, unsigned *n)
{
    PyObject *fast = PySequence_Fast(seq, "layout offsets must be a sequence");
    if (fast == NULL)
        return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    if ((size_t)len > max) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "too many layout offsets (%zd > %u)", len, max);
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(fast, i);
        unsigned v, h = 0;
        if (has != NULL) {
            if (!PyArg_ParseTuple(it, "Ip", &v, &h)) {
                Py_DECREF(fast);
                return -1;
            }
            has[i] = h;
        } else {
            v = (unsigned)PyLong_AsUnsignedLong(it);
            if (PyErr_Occurred()) {
                Py_DECREF(fast);
                return -1;
            }
        }
        out[i] = v;
    }
    *n = (unsigned)len;
    Py_DECREF(fast);
    return 0;
}

/* (offset, is v6) of the IP header that carries the header at off: the last IP header before it */
static int ip_before(const struct layout *L, unsigned off, unsigned *ip, unsigned *v6)
{
    int found = 0;
    for (unsigned i = 0; i < L->n4; i++)
        if (L->ip4[i] < off && (!found || L->ip4[i] > *ip)) {
            *ip = L->ip4[i];
            *v6 = 0;
            found = 1;
        }
    for (unsigned i = 0; i < L->n6; i++)
        if (L->ip6[i] < off && (!found || L->ip6[i] > *ip)) {
            *ip = L->ip6[i];
            *v6 = 1;
            found = 1;
        }
    return found;
}

static uint64_t pseudo(const uint8_t *hdr, unsigned ip, unsigned v6, unsigned proto, size_t len)
{
    uint64_t s = v6 ? un_sum(hdr + ip + 8, 32, 0) : un_sum(hdr + ip + 12, 8, 0);
    return s + proto + len;
}

/* validate a layout against the headers H: every field written or read lies inside [0, H) */
static PyObject *check_layout(const struct layout *L, const uint8_t *f, size_t flen)
{
    unsigned H = L->hdr_len;
    if (H > flen)
        return reject("truncated_tcp", "layout: headers end at %u, frame has %zu bytes", H, flen);
    for (unsigned i = 0; i < L->n4; i++) {
        unsigned o = L->ip4[i];
        if (o + 20 > H || o + (unsigned)(f[o] & 0xF) * 4 > H || (f[o] & 0xF) < 5)
            return reject("truncated_ipv4", "layout: ipv4 header at %u beyond the headers (%u)", o, H);
    }
    for (unsigned i = 0; i < L->n6; i++)
        if (L->ip6[i] + 40 > H)
            return reject("truncated_ipv6", "layout: ipv6 header at %u beyond the headers (%u)", L->ip6[i], H);
    for (unsigned i = 0; i < L->nu; i++) {
        unsigned ip, v6;
        if (L->udp[i] + 8 > H || !ip_before(L, L->udp[i], &ip, &v6))
            return reject("truncated_udp", "layout: udp header at %u beyond the headers (%u)", L->udp[i], H);
    }
    unsigned l4min = L->l4 == 17 ? 8 : 20;
    if (L->tcp + l4min > H)
        return reject(L->l4 == 17 ? "truncated_udp" : "truncated_tcp", "layout: l4 header at %u, headers %u",
                      L->tcp, H);
    if (L->tcp_ip + (L->tcp_ip_v6 ? 40 : 20) > L->tcp)
        return reject("truncated_ipv4", "layout: l4 pseudo-header ip at %u", L->tcp_ip);
    Py_RETURN_NONE;
}

static void do_segment(uint8_t *out, const uint8_t *prefix, size_t P, const uint8_t *f, size_t flen,
                       const struct layout *L, size_t mss, unsigned flags)
{
    const size_t H = L->hdr_len, total = flen - H;
    size_t n_full = total / mss, rem = total % mss;
    size_t count = n_full + ((rem || !n_full) ? 1 : 0);
    size_t last_seg = (rem || !n_full) ? rem : mss;
    size_t W = P + H + mss;
    const unsigned tcp = L->tcp;
    const int is_udp = L->l4 == 17;
    uint8_t tmpl[512 + 64];
    memcpy(tmpl, f, H);
    uint32_t seq0 = 0;
    uint8_t flags0 = 0, mid = 0;
    if (is_udp) {
        memset(tmpl + tcp + 4, 0, 4);
    } else {
        seq0 = un_get32(tmpl + tcp + 4);
        flags0 = tmpl[tcp + 13];
        mid = flags0 & (uint8_t)~(TCP_FIN | TCP_PSH | TCP_CWR);
        tmpl[tcp + 13] = mid;
        memset(tmpl + tcp + 4, 0, 4);
        memset(tmpl + tcp + 16, 0, 2);
    }
    uint16_t ids0[MAX_IP];
    for (unsigned k = 0; k < L->n4; k++) {
        unsigned o = L->ip4[k];
        ids0[k] = un_get16(tmpl + o + 4);
        memset(tmpl + o + 2, 0, 4);
        memset(tmpl + o + 10, 0, 2);
    }
    for (unsigned k = 0; k < L->nu; k++)
        memset(tmpl + L->udp[k] + 6, 0, 2);

    for (size_t i = 0; i < count; i++) {
        uint8_t *row = out + i * W, *h = row + P;
        size_t seg = i == count - 1 ? last_seg : mss;
        size_t seg_len = H + seg;
        memcpy(row, prefix, P);
        memcpy(h, tmpl, H);
        memcpy(h + H, f + H + i * mss, seg);
        for (unsigned k = 0; k < L->n4; k++) {
            unsigned o = L->ip4[k];
            int df = (un_get16(tmpl + o + 6) & 0x4000) != 0;
            int fixed = ((flags & SEG_FIXED_NESTED_IDS) && o != L->tcp_ip) || (!(flags & SEG_FIX_IP_IDS) && df);
            un_put16(h + o + 2, (uint16_t)(seg_len - o));
            un_put16(h + o + 4, fixed ? ids0[k] : (uint16_t)(ids0[k] + i));
            un_put16(h + o + 10, un_csum(un_sum(h + o, (size_t)(h[o] & 0xF) * 4, 0)));
        }
        for (unsigned k = 0; k < L->n6; k++)
            un_put16(h + L->ip6[k] + 4, (uint16_t)(seg_len - L->ip6[k] - 40));
        for (unsigned k = 0; k < L->nu; k++)
            un_put16(h + L->udp[k] + 4, (uint16_t)(seg_len - L->udp[k]));
        uint64_t ps = pseudo(h, L->tcp_ip, L->tcp_ip_v6, L->l4, seg_len - tcp);
        if (is_udp) {
            un_put16(h + tcp + 4, (uint16_t)(seg_len - tcp));
            uint16_t c = un_csum(un_sum(h + tcp, seg_len - tcp, ps));
            un_put16(h + tcp + 6, c ? c : 0xFFFF);
        } else {
            uint32_t seq = seq0 + (uint32_t)(i * mss);
            uint8_t fl = mid;
            if (i == 0)
                fl |= flags0 & TCP_CWR;
            if (i == count - 1)
                fl |= flags0 & (TCP_FIN | TCP_PSH);
            un_put32(h + tcp + 4, seq);
            h[tcp + 13] = fl;
            un_put16(h + tcp + 16, un_csum(un_sum(h + tcp, seg_len - tcp, ps)));
        }
    }
    /* nested UDP checksums, innermost first: equal for every full-sized row, so computed once per block */
    for (int k = (int)L->nu - 1; k >= 0; k--) {
        if (!L->udp_has[k])
            continue;
        unsigned o = L->udp[k], ip = 0, v6 = 0;
        ip_before(L, o, &ip, &v6);
        for (int blk = 0; blk < 2; blk++) {
            size_t r0 = blk == 0 ? 0 : n_full, r1 = blk == 0 ? n_full : count;
            if (r0 >= r1)
                continue;
            uint8_t *h = out + r0 * W + P;
            size_t seg_len = H + (r0 == count - 1 ? last_seg : mss);
            size_t n = seg_len - o;
            uint16_t c = un_csum(un_sum(h + o, n, pseudo(h, ip, v6, 17, n)));
            if (c == 0)
                c = 0xFFFF;
            for (size_t r = r0; r < r1; r++)
                un_put16(out + r * W + P + o + 6, c);
        }
    }
}

static PyObject *tx_segment(PyObject *self, PyObject *args)
{
    Py_buffer pb, fb;
    PyObject *ip4, *ip6, *udp;
    struct layout L;
    unsigned long mss;
    unsigned flags = SEG_FIX_IP_IDS;
    if (!PyArg_ParseTuple(args, "y*y*(OOOIpIII)k|I", &pb, &fb, &ip4, &ip6, &udp, &L.tcp_ip, &L.tcp_ip_v6, &L.tcp,
                          &L.hdr_len, &L.l4, &mss, &flags))
        return NULL;
    PyObject *res = NULL, *out = NULL;
    if (parse_offsets(ip4, L.ip4, NULL, MAX_IP, &L.n4) < 0 || parse_offsets(ip6, L.ip6, NULL, MAX_IP, &L.n6) < 0 ||
        parse_offsets(udp, L.udp, L.udp_has, MAX_UDP, &L.nu) < 0)
        goto done;
    if (mss == 0 || mss > 65535) {
        PyErr_Format(PyExc_ValueError, "mss must be in 1..65535 (got %lu)", mss);
        goto done;
    }
    if (L.hdr_len > 512) {
        reject("fold_too_large", "headers of %u bytes", L.hdr_len);
        goto done;
    }
    PyObject *ok = check_layout(&L, fb.buf, (size_t)fb.len);
    if (ok == NULL)
        goto done;
    Py_DECREF(ok);
    size_t P = (size_t)pb.len, H = L.hdr_len, total = (size_t)fb.len - H;
    size_t n_full = total / mss, rem = total % mss;
    size_t count = n_full + ((rem || !n_full) ? 1 : 0);
    size_t last_seg = (rem || !n_full) ? rem : mss;
    size_t W = P + H + mss, nbytes = (count - 1) * W + P + H + last_seg;
    out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)nbytes);
    if (out == NULL)
        goto done;
    uint8_t *o = (uint8_t *)PyByteArray_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    do_segment(o, pb.buf, P, fb.buf, (size_t)fb.len, &L, mss, flags);
    Py_END_ALLOW_THREADS
    res = Py_BuildValue("(Onnn)", out, (Py_ssize_t)W, (Py_ssize_t)count, (Py_ssize_t)(P + H + last_seg));
done:
    Py_XDECREF(out);
    PyBuffer_Release(&pb);
    PyBuffer_Release(&fb);
    return res;
}

/* ---- syscalls -------------------------------------------------------------------------------------------- */

static int sockaddr_of(PyObject *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    const char *host;
    int port;
    if (!PyArg_ParseTuple(addr, "si", &host, &port)) {
        PyErr_Clear();
        unsigned flow = 0, scope = 0;
        if (!PyArg_ParseTuple(addr, "si|II", &host, &port, &flow, &scope))
            return -1;
    }
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        *len = sizeof *s4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        *len = sizeof *s6;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
    return -1;
}

/* send_gso(fd, buffer, seg, (host, port)) -> bytes sent: one sendmsg with UDP_SEGMENT=seg (0: none) */
static PyObject *tx_send_gso(PyObject *self, PyObject *args)
{
    int fd;
    Py_buffer b;
    unsigned seg;
    PyObject *addr;
    if (!PyArg_ParseTuple(args, "iy*IO", &fd, &b, &seg, &addr))
        return NULL;
    struct sockaddr_storage ss;
    socklen_t sl;
    if (sockaddr_of(addr, &ss, &sl) < 0) {
        PyBuffer_Release(&b);
        return NULL;
    }
    struct iovec iov = {b.buf, (size_t)b.len};
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl;
    struct msghdr m = {0};
    m.msg_name = &ss;
    m.msg_namelen = sl;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (seg && (size_t)b.len > seg) {
        memset(&ctl, 0, sizeof ctl);
        m.msg_control = ctl.buf;
        m.msg_controllen = sizeof ctl.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t s16 = (uint16_t)seg;
        memcpy(CMSG_DATA(c), &s16, sizeof s16);
    }
    ssize_t r;
    Py_BEGIN_ALLOW_THREADS
    r = sendmsg(fd, &m, 0);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    if (r < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromSsize_t(r);
}

static PyMethodDef tx_methods[] = {
    {"vnet_check", tx_vnet_check, METH_VARARGS,
     "vnet_check(buf) -> 13-tuple of virtio_net_hdr fields, validated like VnetHdr.check (Reject otherwise)"},
    {"finish_csum", tx_finish_csum, METH_VARARGS,
     "finish_csum(frame, csum_start, csum_offset) -> bytearray with the partial checksum completed"},
    {"segment", tx_segment, METH_VARARGS,
     "segment(prefix, frame, (ip4, ip6, udp, tcp_ip, tcp_ip_v6, tcp, hdr_len, l4_proto), mss, flags=1)\n"
     " -> (bytearray, row_len, count, last_len): gso.segment_tcp in C"},
    {"send_gso", tx_send_gso, METH_VARARGS,
     "send_gso(fd, buf, seg, (host, port)) -> bytes: sendmsg with UDP_SEGMENT=seg, GIL released"},
    {NULL, NULL, 0, NULL},
};

int udpnest_tx_init(PyObject *module)
{
    un_Reject = PyErr_NewExceptionWithDoc("udpnest._native.Reject",
                                          "A frame the native core refuses: args (reason value, detail).",
                                          PyExc_ValueError, NULL);
    if (un_Reject == NULL || PyModule_AddObjectRef(module, "Reject", un_Reject) < 0)
        return -1;
    PyModule_AddIntConstant(module, "SEG_FIX_IP_IDS", SEG_FIX_IP_IDS);
    PyModule_AddIntConstant(module, "SEG_FIXED_NESTED_IDS", SEG_FIXED_NESTED_IDS);
    return PyModule_AddFunctions(module, tx_methods);
}
