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
#include <limits.h>

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
#define UN_MAX_HDR 4096 /* headers before the payload: far more than 3 levels of anything need */

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

static int rej(un_reject *r, const char *reason, const char *fmt, ...)
{
    if (r != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->detail, sizeof r->detail, fmt, ap);
        va_end(ap);
        r->reason = reason;
    }
    return -1;
}

static PyObject *reject_from(const un_reject *r) { return reject(r->reason, "%s", r->detail); }

int un_vnet_check(const uint8_t *p, size_t n, unsigned f[13], un_reject *r)
{
    if (n < VNET_HDR_LEN)
        return rej(r, "truncated_vnet", "vnet header: %zu bytes, need %d", n, VNET_HDR_LEN);
    f[0] = p[0];
    f[1] = p[1];
    for (int i = 2; i < 13; i++)
        f[i] = le16(p + 2 * i - 2);
    unsigned fl = f[0], gt = f[1], gso_size = f[3], csum_offset = f[5];
    unsigned csum_start = f[4], outer_th = f[11], inner_nh = f[12];
    unsigned tnl = gt & G_TUN, base = gt & ~(G_ECN | G_TUN) & 0xFF;
    if (tnl == G_TUN)
        return rej(r, "bad_vnet", "gso_type 0x%02x: both UDP_TUNNEL_IPV4 and _IPV6", gt);
    if (!(base == G_NONE || base == G_TCPV4 || base == G_UDP || base == G_TCPV6 || base == G_UDP_L4))
        return rej(r, "bad_vnet", "gso_type 0x%02x: unknown base type 0x%02x", gt, base);
    if (gt != G_NONE && base == G_NONE)
        return rej(r, "bad_vnet", "gso_type 0x%02x: ECN/tunnel bits without a GSO type", gt);
    if (gt != G_NONE && gso_size == 0)
        return rej(r, "bad_vnet", "gso_type 0x%02x with gso_size 0", gt);
    if (base == G_UDP_L4) {
        if (gt & G_ECN)
            return rej(r, "bad_vnet", "gso_type 0x%02x: ECN with UDP_L4", gt);
        if (!(fl & F_NEEDS_CSUM))
            return rej(r, "bad_vnet", "flags 0x%02x: UDP_L4 GSO without NEEDS_CSUM", fl);
        if (csum_offset != 6)
            return rej(r, "bad_vnet", "UDP_L4 GSO with csum_offset %u (not 6)", csum_offset);
    } else if ((base == G_TCPV4 || base == G_TCPV6) && (fl & F_NEEDS_CSUM) && csum_offset != 16) {
        return rej(r, "bad_vnet", "TCP GSO with csum_offset %u (not 16)", csum_offset);
    }
    if (tnl) {
        if (!(base == G_TCPV4 || base == G_TCPV6 || base == G_UDP_L4))
            return rej(r, "bad_vnet", "gso_type 0x%02x: UFO inside a UDP tunnel", gt);
        if (fl & F_DATA_VALID)
            return rej(r, "bad_vnet", "flags 0x%02x: DATA_VALID with UDP tunnel GSO", fl);
        if (!(fl & F_NEEDS_CSUM))
            return rej(r, "bad_vnet", "flags 0x%02x: UDP tunnel GSO without NEEDS_CSUM", fl);
        unsigned outer_min = 14 + (tnl == G_TUN6 ? 40 : 20);
        unsigned inner_min = base == G_TCPV6 ? 40 : 20;
        if (outer_th < outer_min || inner_nh < outer_th + 8 || csum_start < inner_nh + inner_min)
            return rej(r, "bad_vnet", "tunnel offsets outer_th=%u inner_nh=%u csum_start=%u out of order", outer_th,
                       inner_nh, csum_start);
    }
    return 0;
}

static PyObject *tx_vnet_check(PyObject *self, PyObject *args)
{
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "y*", &b))
        return NULL;
    unsigned f[13];
    un_reject r;
    int rc = un_vnet_check(b.buf, (size_t)b.len, f, &r);
    PyBuffer_Release(&b);
    if (rc < 0)
        return reject_from(&r);
    return Py_BuildValue("(IIIIIIIIIIIII)", f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9],
                         f[10], f[11], f[12]);
}

/* ---- finish a CHECKSUM_PARTIAL frame (endpoint's _finish_csum) ------------------------------------------ */

int un_finish_csum(const uint8_t *in, size_t n, unsigned cs, unsigned co, uint8_t *out, un_reject *r)
{
    if ((size_t)cs + co + 2 > n)
        return rej(r, "bad_vnet", "csum_start %u + csum_offset %u beyond the frame (%zu)", cs, co, n);
    if (out != in)
        memcpy(out, in, n);
    uint16_t c = un_csum(un_sum(out + cs, n - cs, 0));
    if (c == 0 && co == 6)
        c = 0xFFFF;
    un_put16(out + cs + co, c);
    return 0;
}

static PyObject *tx_finish_csum(PyObject *self, PyObject *args)
{
    Py_buffer b;
    unsigned cs, co;
    if (!PyArg_ParseTuple(args, "y*II", &b, &cs, &co))
        return NULL;
    un_reject r;
    PyObject *out = NULL;
    if ((size_t)cs + co + 2 > (size_t)b.len) { /* the core rejects it: no allocation */
        un_finish_csum(b.buf, (size_t)b.len, cs, co, NULL, &r);
        PyBuffer_Release(&b);
        return reject_from(&r);
    }
    out = PyByteArray_FromStringAndSize(NULL, b.len);
    if (out != NULL)
        un_finish_csum(b.buf, (size_t)b.len, cs, co, (uint8_t *)PyByteArray_AS_STRING(out), NULL);
    PyBuffer_Release(&b);
    return out;
}

/* ---- segmentation (gso.segment_tcp) -------------------------------------------------------------------- */


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
static int ip_before(const struct un_layout *L, unsigned off, unsigned *ip, unsigned *v6)
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
static PyObject *check_layout(const struct un_layout *L, const uint8_t *f, size_t flen)
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
                       const struct un_layout *L, size_t mss, unsigned flags)
{
    const size_t H = L->hdr_len, total = flen - H;
    size_t n_full = total / mss, rem = total % mss;
    size_t count = n_full + ((rem || !n_full) ? 1 : 0);
    size_t last_seg = (rem || !n_full) ? rem : mss;
    size_t W = P + H + mss;
    const unsigned tcp = L->tcp;
    const int is_udp = L->l4 == 17;
    uint8_t tmpl[UN_MAX_HDR];
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
    /* The checksums of a row are the template's sums plus what changes per row (IPv4 length and ID, the
     * TCP sequence number and flags, the payload), added as integers: un_sum of the written row would give
     * the same value, but re-reading words just written byte by byte stalls store forwarding. */
    uint64_t ip4_base[MAX_IP];
    for (unsigned k = 0; k < L->n4; k++)
        ip4_base[k] = un_sum(tmpl + L->ip4[k], (size_t)(tmpl[L->ip4[k]] & 0xF) * 4, 0);
    const int tcp_incr = !is_udp && ((H - tcp) & 1) == 0; /* the payload starts on a word boundary */
    const uint64_t tcp_base = tcp_incr ? un_sum(tmpl + tcp, H - tcp, 0) : 0;

    for (size_t i = 0; i < count; i++) {
        uint8_t *row = out + i * W, *h = row + P;
        size_t seg = i == count - 1 ? last_seg : mss;
        size_t seg_len = H + seg;
        memcpy(row, prefix, P);
        memcpy(h, tmpl, H);
        uint64_t payload_sum = 0; /* (tcp_incr) the payload's sum, taken while copying it */
        if (tcp_incr)
            payload_sum = un_copy_sum(h + H, f + H + i * mss, seg, 0);
        else
            memcpy(h + H, f + H + i * mss, seg);
        for (unsigned k = 0; k < L->n4; k++) {
            unsigned o = L->ip4[k];
            int df = (un_get16(tmpl + o + 6) & 0x4000) != 0;
            int fixed = ((flags & SEG_FIXED_NESTED_IDS) && o != L->tcp_ip) || (!(flags & SEG_FIX_IP_IDS) && df);
            un_put16(h + o + 2, (uint16_t)(seg_len - o));
            uint16_t id = fixed ? ids0[k] : (uint16_t)(ids0[k] + i);
            un_put16(h + o + 4, id);
            un_put16(h + o + 10, un_csum(ip4_base[k] + (uint16_t)(seg_len - o) + id));
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
            uint64_t sum = tcp_incr ? payload_sum + tcp_base + ps + (seq >> 16) + (seq & 0xFFFF) + (uint64_t)(fl - mid)
                                    : un_sum(h + tcp, seg_len - tcp, ps);
            un_put16(h + tcp + 16, un_csum(sum));
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
    struct un_layout L;
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
    if (L.hdr_len > UN_MAX_HDR) {
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

/* ---- fold fast path (txplan's fold + tcp_layout + segment_size + segment, for the steady state) ------- */

#define ETH_P_TEB 0x6558
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define TYPE_FOLD 0x81

struct fold_level {
    unsigned off, l2, l3, v6, tun, encap, next, udp_csum_nz;
};

/* Ethernet (one 802.1Q tag skipped) at pos: header length and ethertype, or 0 */
static unsigned eth_at(const uint8_t *f, size_t n, size_t pos, unsigned *etype)
{
    if (pos + 14 > n)
        return 0;
    unsigned et = un_get16(f + pos + 12);
    if (et == ETH_P_8021Q) {
        if (pos + 18 > n)
            return 0;
        *etype = un_get16(f + pos + 16);
        return 18;
    }
    *etype = et;
    return 14;
}

/* An IP header at pos: its length, version and protocol.  Returns 0 where the Python walk would raise
 * or where this fast path does not follow it (IPv6 extension headers): the caller defers. */
static unsigned ip_at(const uint8_t *f, size_t n, size_t pos, unsigned etype, unsigned *v6, unsigned *proto,
                      int *frag)
{
    if (etype == ETH_P_IP) {
        if (pos + 20 > n || f[pos] >> 4 != 4)
            return 0;
        unsigned hl = (unsigned)(f[pos] & 0xF) * 4;
        if (hl < 20 || pos + hl > n)
            return 0;
        *v6 = 0;
        *proto = f[pos + 9];
        *frag = (un_get16(f + pos + 6) & 0x3FFF) != 0;
        return hl;
    }
    if (etype == ETH_P_IPV6) {
        if (pos + 40 > n || f[pos] >> 4 != 6)
            return 0;
        unsigned nh = f[pos + 6];
        if (nh == 0 || nh == 43 || nh == 44 || nh == 50 || nh == 51 || nh == 60 || nh == 135 || nh == 139 ||
            nh == 140 || nh == 253 || nh == 254)
            return 0; /* extension headers: the Python reference walks them */
        *v6 = 1;
        *proto = nh;
        *frag = 0;
        return 40;
    }
    return 0;
}

/* one FOLD option per level (fold._fold_option): metadata, the level's headers with lengths/checksums zeroed */
static void fold_options(uint8_t *q, const uint8_t *f, const struct fold_level *lv, unsigned nlev, unsigned opt_class)
{
    for (unsigned i = 0; i < nlev; i++) {
        const struct fold_level *L = &lv[i];
        unsigned hlen = L->l2 + L->l3 + 8 + L->tun, data = 6 + hlen, padded = (data + 3) & ~3u;
        un_put16(q, (uint16_t)opt_class);
        q[2] = TYPE_FOLD;
        q[3] = (uint8_t)(padded / 4);
        q[4] = (uint8_t)L->encap;
        q[5] = (uint8_t)(0x30 | (L->v6 ? 0x80 : 0) | (L->udp_csum_nz ? 0x40 : 0));
        q[6] = (uint8_t)L->l2;
        q[7] = (uint8_t)L->l3;
        q[8] = (uint8_t)L->tun;
        q[9] = 0;
        uint8_t *h = q + 10;
        memcpy(h, f + L->off, hlen);
        if (L->v6) {
            memset(h + L->l2 + 4, 0, 2);
        } else {
            memset(h + L->l2 + 2, 0, 2);
            memset(h + L->l2 + 10, 0, 2);
        }
        memset(h + L->l2 + L->l3 + 4, 0, 4);
        memset(h + hlen, 0, padded - data);
        q += 4 + padded;
    }
}

/* fold.find_levels: the nested levels at the start of f, outermost first (up to max_levels), with
 * fold()'s option budget when budget is set.  The walk stops where the reference's stops; returns the
 * number of levels, or -1 where the reference walks IPv6 extension headers (defer to it). */
static int walk_levels(const uint8_t *f, size_t n, const unsigned *pport, const unsigned *penc, unsigned np,
                       unsigned max_levels, int gso, int budget, struct fold_level *lv, size_t *endpos,
                       unsigned *usedp)
{
    size_t pos = 0;
    unsigned kind = ETH_P_TEB, used = 0;
    int nlev = 0;
    if (max_levels > 3)
        max_levels = 3;
    while ((unsigned)nlev < max_levels) {
        unsigned l2 = 0, etype = kind;
        if (kind == ETH_P_TEB && (l2 = eth_at(f, n, pos, &etype)) == 0)
            break;
        size_t l3off = pos + l2;
        unsigned l3, v6;
        if (etype == ETH_P_IP) {
            if (l3off + 20 > n || f[l3off] >> 4 != 4)
                break;
            l3 = (unsigned)(f[l3off] & 0xF) * 4;
            unsigned total = un_get16(f + l3off + 2);
            if (l3 < 20 || l3off + l3 > n)
                break;
            if (!gso && (total < l3 || l3off + total > n))
                break;
            if ((un_get16(f + l3off + 6) & 0x3FFF) || f[l3off + 9] != 17 || (!gso && total != n - l3off))
                break;
            v6 = 0;
        } else if (etype == ETH_P_IPV6) {
            if (l3off + 40 > n || f[l3off] >> 4 != 6)
                break;
            unsigned plen = un_get16(f + l3off + 4), proto = f[l3off + 6];
            if (!gso && l3off + 40 + plen > n)
                break;
            if (proto == 0 || proto == 43 || proto == 44 || proto == 50 || proto == 51 || proto == 60 ||
                proto == 135 || proto == 139 || proto == 140 || proto == 253 || proto == 254)
                return -1;
            if (proto != 17 || (!gso && plen != n - l3off - 40))
                break;
            l3 = 40;
            v6 = 1;
        } else {
            break;
        }
        size_t uoff = l3off + l3, toff = uoff + 8;
        if (toff > n)
            break;
        unsigned ulen = un_get16(f + uoff + 4);
        if (!gso && (ulen < 8 || uoff + ulen > n || ulen != n - uoff))
            break;
        unsigned dport = un_get16(f + uoff + 2), encap = 0, tun, next;
        for (unsigned i = 0; i < np; i++)
            if (pport[i] == dport)
                encap = penc[i];
        if (encap == 1 || encap == 2) {
            if (toff + 8 > n || !(f[toff] & 0x08))
                break;
            tun = 8;
            if (encap == 1) {
                next = ETH_P_TEB;
            } else {
                unsigned npr = f[toff + 3];
                if (!(f[toff] & 0x04) || npr < 1 || npr > 3)
                    break;
                next = npr == 1 ? ETH_P_IP : npr == 2 ? ETH_P_IPV6 : ETH_P_TEB;
            }
        } else if (encap == 3) {
            if (toff + 8 > n || f[toff] >> 6 != 0)
                break;
            tun = 8 + (unsigned)(f[toff] & 0x3F) * 4;
            if (toff + tun > n)
                break;
            next = un_get16(f + toff + 2);
            if (next != ETH_P_TEB && next != ETH_P_IP && next != ETH_P_IPV6)
                break;
        } else {
            break;
        }
        unsigned end = (unsigned)(toff + tun);
        unsigned data = 6 + end - (unsigned)pos, optsz = 4 + ((data + 3) & ~3u);
        if (optsz - 4 > 124 || (budget && used + optsz > 252))
            break;
        lv[nlev] = (struct fold_level){(unsigned)pos, l2, l3, v6, tun, encap, next, un_get16(f + uoff + 6) != 0};
        nlev++;
        used += optsz;
        pos = end;
        kind = next;
    }
    *endpos = pos;
    *usedp = used;
    return nlev;
}

int un_parse_ports(PyObject *ports, un_ports *out)
{
    PyObject *fast = PySequence_Fast(ports, "ports must be a sequence of (port, encap)");
    if (fast == NULL)
        return -1;
    Py_ssize_t nports = PySequence_Fast_GET_SIZE(fast);
    if (nports > UN_MAX_PORTS) {
        Py_DECREF(fast);
        return 1;
    }
    out->n = 0;
    for (Py_ssize_t i = 0; i < nports; i++) {
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "II", &out->port[out->n], &out->enc[out->n])) {
            Py_DECREF(fast);
            return -1;
        }
        out->n++;
    }
    Py_DECREF(fast);
    return 0;
}

int un_hint_prefix(const uint8_t *f, size_t n, unsigned vni, const un_ports *pt, int gso, uint8_t h[16])
{
    size_t end;
    unsigned used;
    struct fold_level lv[3];
    int nlev = walk_levels(f, n, pt->port, pt->enc, pt->n, 2, gso, 0, lv, &end, &used);
    if (nlev < 0)
        return -1;
    memset(h, 0, 16);
    h[2] = 0x65;
    h[3] = 0x58;
    un_put32(h + 4, vni << 8);
    int len = 8;
    const struct fold_level *L = &lv[0];
    if (nlev == 1 && (L->v6 || L->l3 == 20) && end <= 255) {
        unsigned nh = L->l2, tp = L->l2 + L->l3;
        int ok = 1;
        if (!L->v6) /* validate_gro_hint: 0x45, unfragmented, UDP (the walk checked), valid header checksum */
            ok = f[nh] == 0x45 && un_fold(un_sum(f + nh, 20, 0)) == 0xFFFF;
        if (ok) {
            unsigned id = L->next == ETH_P_TEB ? 0 : L->next == ETH_P_IPV6 ? 1 : 2;
            h[0] = 2;
            un_put16(h + 8, 0x0100);
            h[10] = 0x01;
            h[11] = 1;
            h[12] = (uint8_t)(id | (L->v6 ? 4 : 0));
            h[13] = (uint8_t)nh;
            h[14] = (uint8_t)tp;
            h[15] = (uint8_t)end;
            len = 16;
        }
    }
    return len;
}

/* hint_prefix(frame, vni, ports, gso) -> the Geneve header for hint mode (with the Linux GRO hint option
 * when fold.gro_hint_for finds one, else plain), or None (defer: IPv6 extension headers). */
static PyObject *tx_hint_prefix(PyObject *self, PyObject *args)
{
    Py_buffer fb;
    unsigned vni;
    int gso;
    PyObject *ports;
    if (!PyArg_ParseTuple(args, "y*IOp", &fb, &vni, &ports, &gso))
        return NULL;
    PyObject *res = NULL;
    un_ports pt;
    int prc = un_parse_ports(ports, &pt);
    if (prc != 0) {
        if (prc > 0)
            PyErr_SetString(PyExc_ValueError, "too many nested ports");
        goto done;
    }
    uint8_t h[16];
    int len = un_hint_prefix(fb.buf, (size_t)fb.len, vni, &pt, gso, h);
    res = len < 0 ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize((const char *)h, (Py_ssize_t)len);
done:
    PyBuffer_Release(&fb);
    return res;
}

/* the sizes of a plan's rows (gso.segment_tcp's output) */
static void plan_sizes(un_gso_plan *pl, size_t n)
{
    size_t mss = (size_t)pl->mss, H = pl->L.hdr_len, total = n - pl->seg_off - H;
    size_t n_full = total / mss, rem = total % mss;
    pl->count = n_full + ((rem || !n_full) ? 1 : 0);
    size_t last_seg = (rem || !n_full) ? rem : mss;
    pl->row_len = pl->P + H + mss;
    pl->last_len = pl->P + H + last_seg;
    pl->nbytes = (pl->count - 1) * pl->row_len + pl->last_len;
}

/* gso.segment_size: the payload per datagram, aligned to 4 unless that costs a datagram (limit: gso_size) */
static long seg_size(long max_dg, long overhead, long limit, long payload)
{
    long raw = max_dg - overhead;
    if (limit < raw)
        raw = limit;
    long mss = raw - (overhead + raw) % 4;
    if (mss > 0 && raw > mss && (payload + mss - 1) / mss > (payload + raw - 1) / raw)
        mss = raw;
    return mss;
}

/* a plan of rows prefix[0:P] + the headers (L, from frame offset pos) + mss payload bytes; -1 (defer) for an
 * mss outside 64..65535 */
static int plan_set(un_gso_plan *pl, const uint8_t *prefix, size_t P, size_t pos, const struct un_layout *L,
                    long mss, unsigned flags, size_t n)
{
    if (mss < 64 || mss > 65535)
        return -1;
    pl->prefix = prefix;
    pl->P = P;
    pl->pos = pos;
    pl->seg_off = pos;
    pl->L = *L;
    pl->mss = mss;
    pl->flags = flags;
    plan_sizes(pl, n);
    return 0;
}

void un_gso_segment(const un_gso_plan *pl, const uint8_t *f, size_t n, uint8_t *out)
{
    do_segment(out, pl->prefix, pl->P, f + pl->seg_off, n - pl->seg_off, &pl->L, (size_t)pl->mss, pl->flags);
}

int un_fold_gso_plan(const uint8_t *f, size_t n, unsigned vni, unsigned opt_class, const un_ports *pt,
                     unsigned max_levels, unsigned max_dg, unsigned gso_size, un_gso_plan *pl)
{
    size_t pos = 0;
    unsigned kind = ETH_P_TEB, nlev = 0, used = 0;
    struct fold_level lv[3];
    if (max_levels > 3)
        max_levels = 3;
    if (gso_size == 0)
        return -1;
    /* the nested levels (fold.find_levels with gso=True), outermost first */
    for (;;) {
        unsigned l2 = 0, etype = kind, v6, proto;
        int frag;
        if (kind == ETH_P_TEB && (l2 = eth_at(f, n, pos, &etype)) == 0)
            return -1;
        size_t l3off = pos + l2;
        unsigned l3 = ip_at(f, n, l3off, etype, &v6, &proto, &frag);
        if (l3 == 0 || frag)
            return -1;
        if (proto == 6 && nlev > 0) { /* the innermost packet: TCP */
            if (nlev > max_levels)
                return -1;
            break;
        }
        if (proto != 17 || nlev == max_levels)
            return -1;
        size_t uoff = l3off + l3, toff = uoff + 8;
        if (toff > n)
            return -1;
        unsigned dport = un_get16(f + uoff + 2), encap = 0;
        for (unsigned i = 0; i < pt->n; i++)
            if (pt->port[i] == dport)
                encap = pt->enc[i];
        unsigned tun, next;
        if (encap == 1 || encap == 2) {
            if (toff + 8 > n || !(f[toff] & 0x08))
                return -1;
            tun = 8;
            if (encap == 1) {
                next = ETH_P_TEB;
            } else {
                unsigned npr = f[toff + 3];
                if (!(f[toff] & 0x04) || npr < 1 || npr > 3)
                    return -1;
                next = npr == 1 ? ETH_P_IP : npr == 2 ? ETH_P_IPV6 : ETH_P_TEB;
            }
        } else if (encap == 3) {
            if (toff + 8 > n || f[toff] >> 6 != 0)
                return -1;
            tun = 8 + (unsigned)(f[toff] & 0x3F) * 4;
            if (toff + tun > n)
                return -1;
            next = un_get16(f + toff + 2);
            if (next != ETH_P_TEB && next != ETH_P_IP && next != ETH_P_IPV6)
                return -1;
        } else {
            return -1;
        }
        unsigned end = (unsigned)(toff + tun);
        unsigned data = 6 + end - (unsigned)pos, optsz = 4 + ((data + 3) & ~3u);
        if (optsz - 4 > 124 || used + optsz > 252)
            return -1;
        lv[nlev] = (struct fold_level){(unsigned)pos, l2, l3, v6, tun, encap, next, un_get16(f + uoff + 6) != 0};
        nlev++;
        used += optsz;
        pos = end;
        kind = next;
    }
    /* the Geneve header with one FOLD option per level */
    uint8_t *prefix = pl->prefix_buf;
    size_t P = 8 + used;
    prefix[0] = (uint8_t)(used / 4);
    prefix[1] = 0x40; /* C: FOLD is critical */
    un_put16(prefix + 2, (uint16_t)lv[nlev - 1].next);
    un_put32(prefix + 4, vni << 8);
    fold_options(prefix + 8, f, lv, nlev, opt_class);
    /* the innermost frame's layout (gso.tcp_layout without nested levels) */
    const uint8_t *in = f + pos;
    size_t inlen = n - pos, ipos = 0;
    unsigned etype = kind, v6, proto;
    int frag;
    /* the reference (gso.tcp_layout) expects Ethernet first: an innermost IP packet is its business */
    if (kind != ETH_P_TEB || (ipos = eth_at(in, inlen, 0, &etype)) == 0)
        return -1;
    unsigned l3 = ip_at(in, inlen, ipos, etype, &v6, &proto, &frag);
    if (l3 == 0 || frag || proto != 6)
        return -1;
    size_t tcp = ipos + l3;
    if (tcp + 20 > inlen || (in[tcp + 12] >> 4) < 5 || tcp + (size_t)(in[tcp + 12] >> 4) * 4 > inlen)
        return -1;
    struct un_layout L = {0};
    if (v6) {
        L.ip6[0] = (unsigned)ipos;
        L.n6 = 1;
    } else {
        L.ip4[0] = (unsigned)ipos;
        L.n4 = 1;
    }
    L.tcp_ip = (unsigned)ipos;
    L.tcp_ip_v6 = v6;
    L.tcp = (unsigned)tcp;
    L.hdr_len = (unsigned)(tcp + (size_t)(in[tcp + 12] >> 4) * 4);
    L.l4 = 6;
    if (L.hdr_len > UN_MAX_HDR)
        return -1;
    long mss = seg_size((long)max_dg, (long)(P + L.hdr_len), gso_size ? (long)gso_size : LONG_MAX,
                        (long)(inlen - L.hdr_len));
    return plan_set(pl, prefix, P, pos, &L, mss, SEG_FIX_IP_IDS, n);
}

/* fold_gso(frame, vni, opt_class, ports, max_levels, max_datagram, gso_size)
 *   -> (bytearray, row_len, count, last_len, mss), or None: not the common case, use the Python reference.
 * ports: ((udp port, encap 1 VXLAN | 2 VXLAN-GPE | 3 Geneve), ...).  Only a TCP super-packet whose every
 * nested level folds (1..max_levels levels within the option space) and whose headers parse without any
 * doubt is handled; anything else returns None and txplan runs fold.py + gso.py, which produce the drop
 * reason.  For what it handles, the bytes equal the reference's (tests/test_engine_diff_tx.py). */
static PyObject *tx_fold_gso(PyObject *self, PyObject *args)
{
    Py_buffer fb;
    unsigned vni, opt_class, max_levels, max_dg, gso_size;
    int plan_only = 0;
    PyObject *ports;
    if (!PyArg_ParseTuple(args, "y*IIOIII|p", &fb, &vni, &opt_class, &ports, &max_levels, &max_dg, &gso_size,
                          &plan_only))
        return NULL;
    PyObject *res = NULL, *out = NULL;
    un_ports pt;
    un_gso_plan pl;
    int prc = un_parse_ports(ports, &pt);
    if (prc < 0)
        goto done;
    if (prc > 0 || un_fold_gso_plan(fb.buf, (size_t)fb.len, vni, opt_class, &pt, max_levels, max_dg, gso_size,
                                    &pl) < 0) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    const struct un_layout *L = &pl.L;
    if (plan_only) { /* the kernel TX path: prefix, where the inner frame starts, its layout (gso.Layout), MSS */
        if (L->tcp_ip_v6)
            res = Py_BuildValue("(y#n(()(I)()IOIII)l)", (const char *)pl.prefix, (Py_ssize_t)pl.P,
                                (Py_ssize_t)pl.pos, L->tcp_ip, L->tcp_ip, Py_True, L->tcp, L->hdr_len, 6u, pl.mss);
        else
            res = Py_BuildValue("(y#n((I)()()IOIII)l)", (const char *)pl.prefix, (Py_ssize_t)pl.P,
                                (Py_ssize_t)pl.pos, L->tcp_ip, L->tcp_ip, Py_False, L->tcp, L->hdr_len, 6u, pl.mss);
        goto done;
    }
    out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)pl.nbytes);
    if (out == NULL)
        goto done;
    uint8_t *o = (uint8_t *)PyByteArray_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    un_gso_segment(&pl, fb.buf, (size_t)fb.len, o);
    Py_END_ALLOW_THREADS
    res = Py_BuildValue("(Onnnl)", out, (Py_ssize_t)pl.row_len, (Py_ssize_t)pl.count, (Py_ssize_t)pl.last_len,
                        pl.mss);
done:
    Py_XDECREF(out);
    PyBuffer_Release(&fb);
    return res;
}

int un_fold_one(const uint8_t *f, size_t n, unsigned vni, unsigned opt_class, const un_ports *pt,
                unsigned max_levels, uint8_t prefix[UN_MAX_PREFIX], size_t *P, size_t *pos)
{
    unsigned used;
    struct fold_level lv[3];
    /* fold.find_levels without gso: lengths must match the buffer; the option budget applies */
    int walked = walk_levels(f, n, pt->port, pt->enc, pt->n, max_levels, 0, 1, lv, pos, &used);
    if (walked < 0)
        return -1;
    unsigned nlev = (unsigned)walked;
    *P = 8 + used;
    prefix[0] = (uint8_t)(used / 4);
    prefix[1] = nlev ? 0x40 : 0;
    un_put16(prefix + 2, (uint16_t)(nlev ? lv[nlev - 1].next : ETH_P_TEB));
    un_put32(prefix + 4, vni << 8);
    fold_options(prefix + 8, f, lv, nlev, opt_class);
    return 0;
}

/* fold_one(frame, vni, opt_class, ports, max_levels) -> (geneve header with FOLD options, inner offset) or
 * None: fold.fold() of a single (non-GSO) frame, whose IP and UDP lengths must match the buffer exactly.
 * The level walk stops where the reference's stops (a header that does not parse or is not a foldable
 * tunnel level: the levels found so far are folded); IPv6 extension headers, which the reference walks,
 * defer the frame to it (None). */
static PyObject *tx_fold_one(PyObject *self, PyObject *args)
{
    Py_buffer fb;
    unsigned vni, opt_class, max_levels;
    PyObject *ports;
    if (!PyArg_ParseTuple(args, "y*IIOI", &fb, &vni, &opt_class, &ports, &max_levels))
        return NULL;
    PyObject *res = NULL;
    un_ports pt;
    uint8_t prefix[UN_MAX_PREFIX];
    size_t P, pos;
    int prc = un_parse_ports(ports, &pt);
    if (prc < 0)
        goto done;
    if (prc > 0 || un_fold_one(fb.buf, (size_t)fb.len, vni, opt_class, &pt, max_levels, prefix, &P, &pos) < 0)
        res = Py_NewRef(Py_None);
    else
        res = Py_BuildValue("(y#n)", (const char *)prefix, (Py_ssize_t)P, (Py_ssize_t)pos);
done:
    PyBuffer_Release(&fb);
    return res;
}

/* The innermost IP + TCP at pos (Ethernet first when eth): fills L (offsets into f).  0: handled; -1: defer */
static int inner_tcp(const uint8_t *f, size_t n, size_t pos, int eth, struct un_layout *L)
{
    unsigned etype = ETH_P_TEB, v6, proto;
    int frag;
    size_t ipos = pos;
    if (eth) {
        unsigned l2 = eth_at(f, n, pos, &etype);
        if (l2 == 0)
            return -1;
        ipos += l2;
    }
    unsigned l3 = ip_at(f, n, ipos, etype, &v6, &proto, &frag);
    if (l3 == 0 || frag || proto != 6)
        return -1;
    size_t tcp = ipos + l3;
    if (tcp + 20 > n || (f[tcp + 12] >> 4) < 5 || tcp + (size_t)(f[tcp + 12] >> 4) * 4 > n)
        return -1;
    if (v6)
        L->ip6[L->n6++] = (unsigned)ipos;
    else
        L->ip4[L->n4++] = (unsigned)ipos;
    L->tcp_ip = (unsigned)ipos;
    L->tcp_ip_v6 = v6;
    L->tcp = (unsigned)tcp;
    L->hdr_len = (unsigned)(tcp + (size_t)(f[tcp + 12] >> 4) * 4);
    L->l4 = 6;
    return 0;
}

int un_plain_gso_plan(const uint8_t *prefix, size_t P, const uint8_t *f, size_t n, unsigned nested,
                      unsigned max_dg, unsigned gso_size, unsigned flags, un_gso_plan *pl)
{
    struct un_layout L = {0};
    size_t pos = 0;
    if (nested) {
        unsigned etype, v6, proto;
        int frag;
        unsigned l2 = eth_at(f, n, 0, &etype);
        if (l2 == 0)
            return -1;
        unsigned l3 = ip_at(f, n, l2, etype, &v6, &proto, &frag);
        if (l3 == 0 || frag || proto != 17 || l2 + l3 != nested || nested + 8 > n)
            return -1;
        if (v6)
            L.ip6[L.n6++] = l2;
        else
            L.ip4[L.n4++] = l2;
        L.udp[0] = nested;
        L.udp_has[0] = un_get16(f + nested + 6) != 0;
        L.nu = 1;
        /* gso._after_tunnel: Ethernet + IP after an 8-byte header (VXLAN/GPE), else after a Geneve header */
        size_t tun = nested + 8, cand[2] = {tun + 8, 0};
        int nc = 1;
        if (tun + 8 <= n && f[tun] >> 6 == 0 && tun + 8 + (size_t)(f[tun] & 0x3F) * 4 <= n)
            cand[nc++] = tun + 8 + (size_t)(f[tun] & 0x3F) * 4;
        int found = 0;
        for (int c = 0; c < nc && !found; c++) {
            unsigned et;
            if (eth_at(f, n, cand[c], &et) && (et == ETH_P_IP || et == ETH_P_IPV6)) {
                pos = cand[c];
                found = 1;
            }
        }
        if (!found)
            return -1;
    }
    if (inner_tcp(f, n, pos, 1, &L) < 0 || gso_size == 0 || L.hdr_len > UN_MAX_HDR)
        return -1;
    long mss = seg_size((long)max_dg, (long)(P + L.hdr_len), (long)gso_size, (long)(n - L.hdr_len));
    return plan_set(pl, prefix, P, 0, &L, mss, flags, n);
}

/* plain_gso(prefix, frame, nested_udp, max_datagram, gso_size, flags)
 *   -> (bytearray, row_len, count, last_len, mss) or None (defer): a TCP super-packet sent as it is behind
 * prefix (plain or hint Geneve header), with at most one nested UDP tunnel level whose UDP header is at
 * nested_udp (the vnet header's outer_th_offset; 0: none): gso.tcp_layout + segment_size + segment. */
static PyObject *tx_plain_gso(PyObject *self, PyObject *args)
{
    Py_buffer pb, fb;
    unsigned nested, max_dg, gso_size, flags;
    if (!PyArg_ParseTuple(args, "y*y*IIII", &pb, &fb, &nested, &max_dg, &gso_size, &flags))
        return NULL;
    PyObject *res = NULL, *out = NULL;
    un_gso_plan pl;
    if (un_plain_gso_plan(pb.buf, (size_t)pb.len, fb.buf, (size_t)fb.len, nested, max_dg, gso_size, flags, &pl) <
        0) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)pl.nbytes);
    if (out == NULL)
        goto done;
    uint8_t *o = (uint8_t *)PyByteArray_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    un_gso_segment(&pl, fb.buf, (size_t)fb.len, o);
    Py_END_ALLOW_THREADS
    res = Py_BuildValue("(Onnnl)", out, (Py_ssize_t)pl.row_len, (Py_ssize_t)pl.count, (Py_ssize_t)pl.last_len,
                        pl.mss);
done:
    Py_XDECREF(out);
    PyBuffer_Release(&pb);
    PyBuffer_Release(&fb);
    return res;
}

/* ---- syscalls -------------------------------------------------------------------------------------------- */

/* (host, port[, flowinfo, scope_id]) -> sockaddr; -1 with ValueError/TypeError set (the TX burst, txburst.c,
 * clears it and hands the frame back) */
int un_sockaddr(PyObject *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    const char *host;
    int port;
    if (!PyArg_ParseTuple(addr, "si", &host, &port)) {
        PyErr_Clear();
        unsigned flow = 0, scope = 0;
        if (!PyArg_ParseTuple(addr, "si|II", &host, &port, &flow, &scope))
            return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "port out of range: %d", port);
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

/* One sendmsg of ``len`` bytes to ``ss`` with UDP_SEGMENT=seg when they are more than one datagram (seg 0:
 * never), the GIL released (the caller holds it); sendmsg's result, its errno in *err.  Shared by send_gso
 * and the TX burst (txburst.c). */
ssize_t un_send_segments(int fd, const struct sockaddr_storage *ss, socklen_t sl, const void *buf, size_t len,
                         unsigned seg, int flags, int *err)
{
    struct iovec iov = {(void *)buf, len};
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl;
    struct msghdr m = {0};
    m.msg_name = (void *)ss;
    m.msg_namelen = sl;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (seg && len > seg) {
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
    int e;
    Py_BEGIN_ALLOW_THREADS
    r = sendmsg(fd, &m, flags);
    e = errno;
    Py_END_ALLOW_THREADS
    *err = e;
    return r;
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
    if (un_sockaddr(addr, &ss, &sl) < 0) {
        PyBuffer_Release(&b);
        return NULL;
    }
    int err;
    ssize_t r = un_send_segments(fd, &ss, sl, b.buf, (size_t)b.len, seg, 0, &err);
    PyBuffer_Release(&b);
    if (r < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromSsize_t(r);
}

/* send_batch(fd, [(datagram, (host, port)), ...]) -> how many were sent: one sendmmsg for up to 64
 * single datagrams (ACKs and other small frames of one TAP read burst), GIL released.  0 when the socket
 * buffer is full (EAGAIN) before the first; OSError for any other error before the first. */
#define BATCH_MAX 64
static PyObject *tx_send_batch(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *list;
    if (!PyArg_ParseTuple(args, "iO", &fd, &list))
        return NULL;
    PyObject *fast = PySequence_Fast(list, "send_batch wants a list of (datagram, address)");
    if (fast == NULL)
        return NULL;
    Py_ssize_t cnt = PySequence_Fast_GET_SIZE(fast);
    if (cnt > BATCH_MAX)
        cnt = BATCH_MAX;
    struct mmsghdr msgs[BATCH_MAX];
    struct iovec iov[BATCH_MAX];
    struct sockaddr_storage ss[BATCH_MAX];
    Py_buffer bufs[BATCH_MAX];
    Py_ssize_t nb = 0;
    PyObject *res = NULL;
    memset(msgs, 0, sizeof(msgs[0]) * (size_t)(cnt ? cnt : 1));
    for (Py_ssize_t i = 0; i < cnt; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i), *addr;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "send_batch items are (datagram, address)");
            goto done;
        }
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 0), &bufs[nb], PyBUF_SIMPLE) < 0)
            goto done;
        nb++;
        addr = PyTuple_GET_ITEM(item, 1);
        socklen_t sl;
        if (un_sockaddr(addr, &ss[i], &sl) < 0)
            goto done;
        iov[i].iov_base = bufs[i].buf;
        iov[i].iov_len = (size_t)bufs[i].len;
        msgs[i].msg_hdr.msg_name = &ss[i];
        msgs[i].msg_hdr.msg_namelen = sl;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int r = 0;
    if (cnt > 0) {
        Py_BEGIN_ALLOW_THREADS
        r = sendmmsg(fd, msgs, (unsigned)cnt, MSG_DONTWAIT);
        Py_END_ALLOW_THREADS
    }
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            res = PyLong_FromLong(0);
        else
            PyErr_SetFromErrno(PyExc_OSError);
    } else {
        res = PyLong_FromLong(r);
    }
done:
    for (Py_ssize_t i = 0; i < nb; i++)
        PyBuffer_Release(&bufs[i]);
    Py_DECREF(fast);
    return res;
}

/* kernel_headers(v6, dst_mac, src_mac, src, dst, sport, dport, payload_len, ident, ttl, tos, df, flow_label,
 *                base_type, ecn, mss, geneve_len, inner_nh, inner_th, inner_hdr_end, csum_offset)
 *   -> bytes: the tunnel-GSO virtio_net_hdr (24) + outer Ethernet/IP/UDP for the kernel TX path, the same
 * bytes as outer.tunnel_gso_vnet(...) + outer.outer_headers(...) */
static PyObject *tx_kernel_headers(PyObject *self, PyObject *args)
{
    int v6, df, ecn;
    Py_buffer dm, sm, sa, da;
    unsigned sport, dport, plen, ident, ttl, tos, flow, base_type, mss, glen, inh, ith, iend, coff;
    if (!PyArg_ParseTuple(args, "py*y*y*y*IIIIIIpIIpIIIIII", &v6, &dm, &sm, &sa, &da, &sport, &dport, &plen, &ident,
                          &ttl, &tos, &df, &flow, &base_type, &ecn, &mss, &glen, &inh, &ith, &iend, &coff))
        return NULL;
    PyObject *res = NULL;
    size_t alen = v6 ? 16 : 4;
    if (dm.len != 6 || sm.len != 6 || (size_t)sa.len != alen || (size_t)da.len != alen) {
        PyErr_SetString(PyExc_ValueError, "kernel_headers: MACs are 6 bytes, addresses 4 (IPv4) or 16 (IPv6)");
        goto done;
    }
    uint8_t h[24 + 14 + 40 + 8] = {0};
    size_t outer_len = 14 + (v6 ? 40 : 20) + 8, base = outer_len + glen;
    uint8_t *e = h + 24, *ip = e + 14, *udp = ip + (v6 ? 40 : 20);
    unsigned udp_len = 8 + plen;
    /* vnet: little-endian */
    h[0] = 0x01 | 0x08;
    h[1] = (uint8_t)(base_type | (v6 ? 0x40 : 0x20) | (ecn ? 0x80 : 0));
#define LE16(p, v) ((p)[0] = (uint8_t)(v), (p)[1] = (uint8_t)((v) >> 8))
    LE16(h + 2, base + iend);
    LE16(h + 4, mss);
    LE16(h + 6, base + ith);
    LE16(h + 8, coff);
    LE16(h + 20, outer_len - 8);
    LE16(h + 22, base + inh);
#undef LE16
    memcpy(e, dm.buf, 6);
    memcpy(e + 6, sm.buf, 6);
    un_put16(e + 12, v6 ? ETH_P_IPV6 : ETH_P_IP);
    if (v6) {
        un_put32(ip, (6u << 28) | ((tos & 0xFF) << 20) | (flow & 0xFFFFF));
        un_put16(ip + 4, (uint16_t)udp_len);
        ip[6] = 17;
        ip[7] = (uint8_t)ttl;
        memcpy(ip + 8, sa.buf, 16);
        memcpy(ip + 24, da.buf, 16);
    } else {
        ip[0] = 0x45;
        ip[1] = (uint8_t)tos;
        un_put16(ip + 2, (uint16_t)(20 + udp_len));
        un_put16(ip + 4, (uint16_t)ident);
        un_put16(ip + 6, df ? 0x4000 : 0);
        ip[8] = (uint8_t)ttl;
        ip[9] = 17;
        memcpy(ip + 12, sa.buf, 4);
        memcpy(ip + 16, da.buf, 4);
        un_put16(ip + 10, un_csum(un_sum(ip, 20, 0)));
    }
    un_put16(udp, (uint16_t)sport);
    un_put16(udp + 2, (uint16_t)dport);
    un_put16(udp + 4, (uint16_t)udp_len);
    uint64_t ps = un_sum(sa.buf, alen, 0) + un_sum(da.buf, alen, 0) + 17 + (udp_len & 0xFFFF) + (udp_len >> 16);
    un_put16(udp + 6, un_fold(ps));
    res = PyBytes_FromStringAndSize((const char *)h, (Py_ssize_t)(24 + outer_len));
done:
    PyBuffer_Release(&dm);
    PyBuffer_Release(&sm);
    PyBuffer_Release(&sa);
    PyBuffer_Release(&da);
    return res;
}

static PyMethodDef tx_methods[] = {
    {"vnet_check", tx_vnet_check, METH_VARARGS,
     "vnet_check(buf) -> 13-tuple of virtio_net_hdr fields, validated like VnetHdr.check (Reject otherwise)"},
    {"finish_csum", tx_finish_csum, METH_VARARGS,
     "finish_csum(frame, csum_start, csum_offset) -> bytearray with the partial checksum completed"},
    {"segment", tx_segment, METH_VARARGS,
     "segment(prefix, frame, (ip4, ip6, udp, tcp_ip, tcp_ip_v6, tcp, hdr_len, l4_proto), mss, flags=1)\n"
     " -> (bytearray, row_len, count, last_len): gso.segment_tcp in C"},
    {"fold_gso", tx_fold_gso, METH_VARARGS,
     "fold_gso(frame, vni, opt_class, ports, max_levels, max_datagram, gso_size, plan_only=False)\n"
     " -> (bytearray, row_len, count, last_len, mss) or None (defer to the Python reference);\n"
     " plan_only: (prefix, inner offset, layout tuple, mss) for the kernel TX path"},
    {"fold_one", tx_fold_one, METH_VARARGS,
     "fold_one(frame, vni, opt_class, ports, max_levels) -> (geneve header, inner offset) or None (defer)"},
    {"plain_gso", tx_plain_gso, METH_VARARGS,
     "plain_gso(prefix, frame, nested_udp, max_datagram, gso_size, flags)\n"
     " -> (bytearray, row_len, count, last_len, mss) or None (defer to the Python reference)"},
    {"hint_prefix", tx_hint_prefix, METH_VARARGS,
     "hint_prefix(frame, vni, ports, gso) -> hint-mode Geneve header (fold.gro_hint_for) or None (defer)"},
    {"send_batch", tx_send_batch, METH_VARARGS,
     "send_batch(fd, [(datagram, (host, port)), ...]) -> datagrams sent (one sendmmsg, at most 64)"},
    {"kernel_headers", tx_kernel_headers, METH_VARARGS,
     "kernel_headers(v6, dst_mac, src_mac, src, dst, sport, dport, payload_len, ident, ttl, tos, df, flow_label,\n"
     " base_type, ecn, mss, geneve_len, inner_nh, inner_th, inner_hdr_end, csum_offset) -> vnet + outer headers"},
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
