/* RX half of the native core: the per-datagram work of udpnest.rxpipe (the reference) in C.
 *
 * Two functions, both pure (no syscalls, no policy), both byte-for-byte and reason-for-reason the
 * same as the Python reference, proven by tests/test_engine_diff_rx.py:
 *
 *  rx_rows(buf, count, row_len, last_len, vni, opt_class, folds=None) -> list
 *      The one-datagram path (rxpipe._single) for each row of a read: Geneve fixed header, VNI, option
 *      TLVs (structure first, then meaning, as parse_packet), the GRO hint, OAM, protocol, and the first
 *      IP header of the frame (rxpipe._check_l3).  Per row one code:
 *        >= 0   write the frame at offset (code & 0xFFFF) of the row with a zero vnet header;
 *               bit 16: the GRO hint was present (kind "hint", else "plain");
 *        -1     defer: a FOLD or echo option of udpnest's class (the reference handles the row);
 *        (headers, offset): a FOLD row whose Geneve header matches a template in the list `folds`
 *               (built from a header the reference validated; equal but for the carried IPv4 IDs): the
 *               nested headers restored (lengths, IPv4 header checksums, nested UDP checksums
 *               computed), the innermost frame at offset;
 *        <= -2  drop: reason RX_REASONS[-2 - code].
 *
 *  rx_coalesce(buf, count, row_len, last_len, G, H, ip4, ip6, udp, tcp_ip, tcp_ip_v6, tcp,
 *              keep_full, keep_last, verify) -> int | tuple
 *      The per-row checks of rxpipe._coalesce for a read whose first row's layout the reference has
 *      found (ip4: ((off, innermost), ...); ip6: (off, ...); udp: ((off, has_csum, ip_off, ip_v6), ...);
 *      keep_*: the header masks, one byte per header byte).  Returns the outcome code of the first
 *      failing check (RX_OUTCOMES[code]) or (payload bytes, flags of the last row, seq0, first_ids,
 *      last_ids) when every row continues the first.  count == 1: one datagram of row_len bytes holding
 *      a whole super-packet (rxpipe._whole): lengths, flags and checksums only; 0 when they pass.
 *      count == 0: one datagram of row_len (== last_len) bytes as a segment (rxpipe.single_run): the row
 *      checks of count 1, PSH/FIN allowed; the same tuple as for count > 1.
 *
 * Bounds: every offset handed in is checked against the row lengths and the buffer before any read.
 * The byte work of rx_coalesce runs with the GIL released (rx_rows keeps it: it looks up FOLD templates).
 */
#include "udpnest.h"

/* Reason values (udpnest.wire.errors.Reason) this file can return; the order is the code. */
static const char *const rx_reasons[] = {
    "truncated_geneve", "bad_geneve_version", "wrong_vni",     "bad_geneve_optlen", "bad_gro_hint",
    "unknown_critical_option", "oam",            "bad_geneve_protocol", "truncated_eth", "truncated_ipv4",
    "bad_ipv4_version", "bad_ipv4_ihl",          "bad_ipv4_length", "truncated_ipv6", "bad_ipv6_version",
    "bad_ipv6_length",  "bad_ipv6_extension", "fold_too_large",
};
enum {
    R_TRUNCATED_GENEVE, R_BAD_GENEVE_VERSION, R_WRONG_VNI, R_BAD_GENEVE_OPTLEN, R_BAD_GRO_HINT,
    R_UNKNOWN_CRITICAL_OPTION, R_OAM, R_BAD_GENEVE_PROTOCOL, R_TRUNCATED_ETH, R_TRUNCATED_IPV4,
    R_BAD_IPV4_VERSION, R_BAD_IPV4_IHL, R_BAD_IPV4_LENGTH, R_TRUNCATED_IPV6, R_BAD_IPV6_VERSION,
    R_BAD_IPV6_LENGTH, R_BAD_IPV6_EXTENSION, R_FOLD_TOO_LARGE, R_COUNT
};
_Static_assert(R_FOLD_TOO_LARGE == UN_R_FOLD_TOO_LARGE, "udpnest.h mirrors rx.c");
#define DROP(r) (-2 - (r))
#define DEFER (-1)

/* rxpipe.Outcome values rx_coalesce can return; the order is the code (0: every row continues). */
static const char *const rx_outcomes[] = {"coalesced", "lengths", "hdr_mismatch", "flags", "seq", "ids", "csum"};
enum { O_OK, O_LENGTHS, O_HDR_MISMATCH, O_FLAGS, O_SEQ, O_IDS, O_CSUM };
_Static_assert(O_OK == UN_O_OK, "udpnest.h mirrors rx.c");

#define GRO_HINT_CLASS 0x0100
#define GRO_HINT_TYPE 0x01
#define TYPE_CRITICAL 0x80
#define ETH_P_TEB 0x6558

/* The big-endian 16-bit word sum of p[0:n] (an odd last byte padded with zero) modulo 0xFFFF, 8 bytes
 * at a time: little-endian words summed, times 256 (a byte swap is a multiplication by 2^8 modulo 0xFFFF,
 * since 2^16 = 1).  Only for checks and sums that are used modulo 0xFFFF. */
static uint64_t rx_sum_mod(const uint8_t *p, size_t n)
{
    size_t bulk = n & ~(size_t)15;
    uint64_t a = un_sum_le(p, bulk); /* udpnest.h: SSE2 where available */
    p += bulk;
    n -= bulk;
    uint8_t tail[16] = {0};
    memcpy(tail, p, n);
    uint64_t w0, w1;
    memcpy(&w0, tail, 8);
    memcpy(&w1, tail + 8, 8);
    a += (w0 & 0xFFFFFFFFu) + (w0 >> 32) + (w1 & 0xFFFFFFFFu) + (w1 >> 32);
    return (a % 0xFFFF) * 256 % 0xFFFF;
}

/* --- the one-datagram path -------------------------------------------------------------------------- */

/* parse_ipv4(frame, off) with check_len (no checksum): -1 (good) or a reason code. */
static int rx_ipv4(const uint8_t *f, size_t n, size_t off)
{
    if (off + 20 > n)
        return R_TRUNCATED_IPV4;
    if (f[off] >> 4 != 4)
        return R_BAD_IPV4_VERSION;
    size_t hlen = (size_t)(f[off] & 0xF) * 4;
    if (hlen < 20)
        return R_BAD_IPV4_IHL;
    if (off + hlen > n)
        return R_TRUNCATED_IPV4;
    size_t total = un_get16(f + off + 2);
    if (total < hlen || off + total > n)
        return R_BAD_IPV4_LENGTH;
    return -1;
}

/* parse_ipv6(frame, off) with check_len: -1 (good) or a reason code (extension headers walked, at most 8). */
static int rx_ipv6(const uint8_t *f, size_t n, size_t off)
{
    if (off + 40 > n)
        return R_TRUNCATED_IPV6;
    if (f[off] >> 4 != 6)
        return R_BAD_IPV6_VERSION;
    size_t plen = un_get16(f + off + 4);
    if (off + 40 + plen > n)
        return R_BAD_IPV6_LENGTH;
    unsigned proto = f[off + 6];
    size_t pos = off + 40;
    int walked = 0;
    while (proto == 0 || proto == 43 || proto == 60 || proto == 44 || proto == 51) {
        if (walked == 8)
            return R_BAD_IPV6_EXTENSION;
        if (pos + 8 > n)
            return R_TRUNCATED_IPV6;
        unsigned nxt = f[pos], ln = f[pos + 1];
        size_t size = proto == 44 ? 8 : proto == 51 ? ((size_t)ln + 2) * 4 : ((size_t)ln + 1) * 8;
        if (pos + size > n)
            return R_TRUNCATED_IPV6;
        pos += size;
        proto = nxt;
        walked++;
    }
    if (pos - off - 40 > plen)
        return R_BAD_IPV6_LENGTH;
    return -1;
}

int rx_one(const uint8_t *p, size_t n, long vni, long opt_class)
{
    if (n < 8)
        return DROP(R_TRUNCATED_GENEVE);
    if (p[0] >> 6 != 0)
        return DROP(R_BAD_GENEVE_VERSION);
    size_t G = 8 + (size_t)(p[0] & 0x3F) * 4;
    if (G > n)
        return DROP(R_TRUNCATED_GENEVE);
    if (vni >= 0 && (long)((uint32_t)p[4] << 16 | (uint32_t)p[5] << 8 | p[6]) != vni)
        return DROP(R_WRONG_VNI);
    /* every TLV must fit before any is interpreted (parse_options, then parse_packet) */
    for (size_t pos = 8; pos < G;) {
        if (pos + 4 > G)
            return DROP(R_BAD_GENEVE_OPTLEN);
        size_t dlen = (size_t)(p[pos + 3] & 0x1F) * 4;
        if (pos + 4 + dlen > G)
            return DROP(R_BAD_GENEVE_OPTLEN);
        pos += 4 + dlen;
    }
    int hint = 0;
    for (size_t pos = 8; pos < G;) {
        unsigned cls = un_get16(p + pos), typ = p[pos + 2];
        size_t dlen = (size_t)(p[pos + 3] & 0x1F) * 4;
        const uint8_t *d = p + pos + 4;
        pos += 4 + dlen;
        if (opt_class >= 0 && (long)cls == opt_class) {
            if (typ == (TYPE_CRITICAL | 1) || typ == (TYPE_CRITICAL | 2) || typ == (TYPE_CRITICAL | 3))
                return DEFER; /* FOLD / echo: the reference unfolds or hands it to the control plane */
        } else if (cls == GRO_HINT_CLASS && typ == GRO_HINT_TYPE) {
            if (hint || dlen != 4)
                return DROP(R_BAD_GRO_HINT);
            unsigned v6 = d[0] & 4, nh = d[1], tp = d[2], hlen = d[3];
            if (tp + 8 > hlen || nh + (v6 ? 40u : 20u) > tp || (d[0] & 3) >= 3)
                return DROP(R_BAD_GRO_HINT);
            hint = 1;
            continue;
        }
        if (typ & TYPE_CRITICAL)
            return DROP(R_UNKNOWN_CRITICAL_OPTION);
    }
    if (p[1] & 0x80)
        return DROP(R_OAM);
    if (un_get16(p + 2) != ETH_P_TEB)
        return DROP(R_BAD_GENEVE_PROTOCOL);
    const uint8_t *f = p + G;
    size_t fl = n - G;
    if (fl < 14)
        return DROP(R_TRUNCATED_ETH);
    unsigned et = un_get16(f + 12);
    int r = et == 0x0800 ? rx_ipv4(f, fl, 14) : et == 0x86DD ? rx_ipv6(f, fl, 14) : -1;
    if (r >= 0)
        return DROP(r);
    return (int)G | hint << 16;
}

static uint32_t rx_pseudo(const uint8_t *ip, int v6, unsigned proto, uint64_t length);

/* --- FOLD: restore the nested headers of a validated header (fold.restore_headers, "compute") ---------- */

#define F_V6 0x80
#define F_UDP_CSUM 0x40
#define F_LEN_ZEROED 0x20
#define F_CSUM_ZEROED 0x10
#define MAX_FOLD_HDRS UN_MAX_FOLD_HDRS /* 512: 3 levels of at most 124 bytes each, with room to spare */

static uint32_t rx_ones(const uint8_t *p, size_t n) /* csum.ones_sum's value modulo 0xFFFF */
{
    return (uint32_t)rx_sum_mod(p, n);
}

/* A template (built by rxnative.py from fold.decode_folds of a header the reference validated):
 *   G (16 bits), mask (G bytes, 1: must equal), ref (G bytes: the validated header), L (levels), then per
 *   level, outermost first: flags, l2, l3, tun, header length (16 bits), offset of the carried headers in
 *   the Geneve header (16 bits).  The mask leaves out each carried IPv4 header's ID: nothing in the
 *   validation reads it, and every packet of a flow has its own.
 * rx_match: does Geneve header p (G bytes) match?  Returns the level table or NULL. */
const uint8_t *rx_match(const uint8_t *tpl, size_t tlen, const uint8_t *p, size_t G)
{
    if (tlen < 2 || un_get16(tpl) != G || tlen < 2 + 2 * G + 1)
        return NULL;
    const uint8_t *mask = tpl + 2, *ref = tpl + 2 + G;
    for (size_t j = 0; j < G; j++)
        if (mask[j] && p[j] != ref[j])
            return NULL;
    return tpl + 2 + 2 * G;
}

/* Restore the nested headers for the packet whose Geneve header is p (G bytes) from the level table lv
 * (lvlen bytes).  Writes them to out (capacity MAX_FOLD_HDRS); returns their length, -1 when a restored
 * length would exceed 65535 (fold_too_large), -2 when the table is malformed (never, for ours). */
long rx_restore(const uint8_t *lv0, size_t lvlen, const uint8_t *p, size_t G, const uint8_t *inner,
                       size_t inner_len, uint8_t *out)
{
    const uint8_t *lv[4];
    size_t hl[4];
    if (lvlen < 1 || lv0[0] < 1 || lv0[0] > 3 || lvlen < 1 + (size_t)lv0[0] * 8)
        return -2;
    int L = lv0[0];
    size_t total = 0;
    int need_sum = 0;
    for (int i = 0; i < L; i++) {
        const uint8_t *m = lv0 + 1 + i * 8;
        lv[i] = m;
        hl[i] = un_get16(m + 4);
        size_t l2 = m[1], l3 = m[2], tun = m[3], off = un_get16(m + 6);
        if (off + hl[i] > G || l2 + l3 + 8 + tun != hl[i] || l3 < (m[0] & F_V6 ? 40u : 20u))
            return -2;
        if (m[0] & F_UDP_CSUM)
            need_sum = 1;
        total += hl[i];
    }
    if (total > MAX_FOLD_HDRS)
        return -2;
    uint64_t suffix_sum = need_sum ? rx_ones(inner, inner_len) : 0;
    size_t suffix_len = inner_len, at = total;
    for (int i = L - 1; i >= 0; i--) {
        const uint8_t *m = lv[i];
        unsigned flags = m[0];
        size_t l2 = m[1], l3 = m[2], tun = m[3], n = hl[i];
        at -= n;
        uint8_t *h = out + at;
        memcpy(h, p + un_get16(m + 6), n);
        size_t ip = l2, u = l2 + l3;
        int v6 = (flags & F_V6) != 0;
        size_t udp_len = 8 + tun + suffix_len;
        size_t ip_len = (v6 ? l3 - 40 : l3) + udp_len;
        if (udp_len > 0xFFFF || ip_len > 0xFFFF)
            return -1;
        if (flags & F_LEN_ZEROED) {
            un_put16(h + ip + (v6 ? 4 : 2), (uint16_t)ip_len);
            un_put16(h + u + 4, (uint16_t)udp_len);
        }
        if (flags & F_CSUM_ZEROED) {
            if (!v6)
                un_put16(h + ip + 10, un_csum(un_sum(h + ip, l3, 0)));
            if (flags & F_UDP_CSUM) {
                uint64_t ps = rx_pseudo(h + ip, v6, 17, udp_len);
                uint16_t c = un_csum(un_sum(h + u, n - u, ps + suffix_sum));
                un_put16(h + u + 6, c ? c : 0xFFFF);
            }
        }
        suffix_sum = (suffix_sum + rx_ones(h, n)) % 0xFFFF;
        suffix_len += n;
    }
    return (long)total;
}

/* The frame check after unfold (rxpipe._check_l3): -1 or a reason code. */
int rx_check_l3(const uint8_t *f, size_t fl)
{
    if (fl < 14)
        return R_TRUNCATED_ETH;
    unsigned et = un_get16(f + 12);
    return et == 0x0800 ? rx_ipv4(f, fl, 14) : et == 0x86DD ? rx_ipv6(f, fl, 14) : -1;
}

/* One deferred row with a FOLD header matching one of the templates in `folds` (a list): the restored
 * headers + the offset of the innermost frame, a drop code, or NULL with *deferred set. */
static PyObject *rx_fold_row(const uint8_t *p, size_t n, PyObject *folds, int *deferred)
{
    *deferred = 1;
    if (folds == NULL || n < 8)
        return NULL;
    size_t G = 8 + (size_t)(p[0] & 0x3F) * 4;
    if (G > n)
        return NULL;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(folds); k++) {
        PyObject *tpl = PyList_GET_ITEM(folds, k);
        if (!PyBytes_Check(tpl))
            continue;
        const uint8_t *t = (const uint8_t *)PyBytes_AS_STRING(tpl);
        size_t tlen = (size_t)PyBytes_GET_SIZE(tpl);
        const uint8_t *lv = rx_match(t, tlen, p, G);
        if (lv == NULL)
            continue;
        uint8_t hdrs[MAX_FOLD_HDRS];
        long hl = rx_restore(lv, tlen - (size_t)(lv - t), p, G, p + G, n - G, hdrs);
        if (hl == -2)
            return NULL;
        *deferred = 0;
        if (hl == -1)
            return PyLong_FromLong(DROP(R_FOLD_TOO_LARGE));
        int r = rx_check_l3(p + G, n - G);
        if (r >= 0)
            return PyLong_FromLong(DROP(r));
        return Py_BuildValue("(y#n)", (const char *)hdrs, (Py_ssize_t)hl, (Py_ssize_t)G);
    }
    return NULL;
}

static PyObject *native_rx_rows(PyObject *self, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t count, row_len, last_len;
    long vni, opt_class;
    PyObject *folds = Py_None;
    if (!PyArg_ParseTuple(args, "y*nnnll|O", &b, &count, &row_len, &last_len, &vni, &opt_class, &folds))
        return NULL;
    if (folds != Py_None && !PyList_Check(folds)) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_TypeError, "rx_rows: folds must be a list or None");
        return NULL;
    }
    if (count < 1 || row_len < 0 || last_len < 0 || last_len > row_len ||
        (count - 1) * row_len + last_len > b.len) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "rx_rows: rows do not fit the buffer");
        return NULL;
    }
    PyObject *out = PyList_New(count);
    for (Py_ssize_t i = 0; out != NULL && i < count; i++) {
        const uint8_t *p = (const uint8_t *)b.buf + i * row_len;
        size_t n = (size_t)(i == count - 1 ? last_len : row_len);
        int code = rx_one(p, n, vni, opt_class);
        PyObject *v = NULL;
        if (code == DEFER) {
            int deferred;
            v = rx_fold_row(p, n, folds == Py_None ? NULL : folds, &deferred);
            if (v == NULL && PyErr_Occurred()) {
                Py_CLEAR(out);
                break;
            }
            if (v == NULL)
                v = PyLong_FromLong(DEFER);
        } else {
            v = PyLong_FromLong(code);
        }
        if (v == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, v);
    }
    PyBuffer_Release(&b);
    return out;
}

/* --- coalescing checks ------------------------------------------------------------------------------ */

/* MAX_L and rx_layout: udpnest.h (shared with csrc/rxbatch.c) */

/* csum.ones_sum of a small buffer, exactly: 0 only when every word is zero, else 1..0xFFFF */
static uint32_t rx_ones_small(const uint8_t *p, size_t n)
{
    uint64_t t = un_sum(p, n, 0);
    uint32_t s = (uint32_t)(t % 0xFFFF);
    return s == 0 && t ? 0xFFFF : s;
}

static uint32_t rx_fold32(uint64_t t)
{
    while (t >> 16)
        t = (t & 0xFFFF) + (t >> 16);
    return (uint32_t)t;
}

/* csum.pseudo_sum */
static uint32_t rx_pseudo(const uint8_t *ip, int v6, unsigned proto, uint64_t length)
{
    size_t a = v6 ? 16 : 4;
    const uint8_t *src = ip + (v6 ? 8 : 12);
    return rx_fold32((uint64_t)rx_ones_small(src, a) + rx_ones_small(src + a, a) + proto + (length & 0xFFFF) +
                     (length >> 16));
}

/* rxpipe._lengths_fit for one row (the datagram is `length` bytes) */
static int rx_lengths_fit(const uint8_t *row, const rx_layout *L, long length)
{
    long G = (long)L->G;
    for (int i = 0; i < L->n4; i++)
        if ((long)un_get16(row + G + L->ip4[i] + 2) != length - G - (long)L->ip4[i])
            return 0;
    for (int i = 0; i < L->n6; i++)
        if ((long)un_get16(row + G + L->ip6[i] + 4) != length - G - (long)L->ip6[i] - 40)
            return 0;
    for (int i = 0; i < L->nu; i++)
        if ((long)un_get16(row + G + L->udp[i] + 4) != length - G - (long)L->udp[i])
            return 0;
    return 1;
}

int rx_check(const uint8_t *buf, size_t count, size_t row_len, size_t last_len, const rx_layout *L,
                    const uint8_t *keep_full, const uint8_t *keep_last, int verify, int single)
{
    const size_t G = L->G, GH = L->G + L->H;
    const uint8_t *row0 = buf, *last = buf + (count - 1) * row_len;
    if (!rx_lengths_fit(row0, L, (long)row_len) || !rx_lengths_fit(last, L, (long)last_len))
        return O_LENGTHS;
    for (size_t i = 1; i < count; i++) {
        const uint8_t *r = buf + i * row_len;
        const uint8_t *keep = i == count - 1 ? keep_last : keep_full;
        if (un_masked_differs(r, row0, keep, GH))
            return O_HDR_MISMATCH;
    }
    const size_t t = G + L->tcp;
    const size_t mss = row_len - GH;
    unsigned base = row0[t + 13];
    if (single) /* one datagram as a segment (rxpipe.single_run): PSH/FIN allowed, they end its run */
        base &= ~(0x08u | 0x01u);
    if (base & (0x02 | 0x04 | 0x20 | 0x80 | 0x08 | 0x01) || !(base & 0x10))
        return O_FLAGS;
    for (size_t i = 0; i + 1 < count; i++)
        if (buf[i * row_len + t + 13] != base)
            return O_FLAGS;
    if ((last[t + 13] & ~(0x08u | 0x01u)) != base)
        return O_FLAGS;
    uint32_t seq0 = un_get32(row0 + t + 4);
    for (size_t i = 1; i < count; i++)
        if ((uint64_t)(uint32_t)(un_get32(buf + i * row_len + t + 4) - seq0) != (uint64_t)i * mss)
            return O_SEQ;
    for (int k = 0; k < L->n4; k++) {
        size_t o = G + L->ip4[k];
        unsigned id0 = un_get16(row0 + o + 4);
        int df = (row0[o + 6] & 0x40) != 0;
        int fixed_allowed = df || !L->inner4[k];
        int fixed = 1, incr = 1;
        for (size_t i = 1; i < count; i++) {
            unsigned step = (un_get16(buf + i * row_len + o + 4) - id0) & 0xFFFF;
            if (step)
                fixed = 0;
            if (step != (i & 0xFFFF))
                incr = 0;
        }
        if (!(fixed_allowed && fixed) && !incr)
            return O_IDS;
    }
    if (!verify)
        return O_OK;
    /* every TCP checksum: sum(segment) + pseudo-header == 0 (mod 0xFFFF) */
    const uint8_t *tip = row0 + G + L->tcp_ip;
    uint32_t p_full = rx_pseudo(tip, L->tcp_ip_v6, 6, row_len - t);
    uint32_t p_last = rx_pseudo(tip, L->tcp_ip_v6, 6, last_len - t);
    for (size_t i = 0; i < count; i++) {
        size_t len = i == count - 1 ? last_len : row_len;
        uint64_t s = rx_sum_mod(buf + i * row_len + t, len - t) + (i == count - 1 ? p_last : p_full);
        if (s % 0xFFFF)
            return O_CSUM;
    }
    /* IPv4 header checksums */
    for (int k = 0; k < L->n4; k++) {
        size_t o = G + L->ip4[k];
        size_t hl = (size_t)(row0[o] & 0xF) * 4;
        for (size_t i = 0; i < count; i++)
            if (un_sum(buf + i * row_len + o, hl & ~(size_t)1, 0) % 0xFFFF)
                return O_CSUM;
    }
    /* non-zero nested UDP checksums: the TCP segment behind sums to minus its pseudo-header */
    for (int k = 0; k < L->nu; k++) {
        if (!L->udp_has[k])
            continue;
        size_t u = L->udp[k];
        const uint8_t *nip = row0 + G + L->udp_ip[k];
        for (size_t i = 0; i < count; i++) {
            size_t len = i == count - 1 ? last_len : row_len;
            uint64_t p_udp = rx_pseudo(nip, L->udp_v6[k], 17, len - G - u);
            uint64_t p_tcp = rx_pseudo(tip, L->tcp_ip_v6, 6, len - G - L->tcp);
            uint64_t total = un_sum(buf + i * row_len + G + u, ((L->tcp - u) / 2) * 2, 0) + (0xFFFF - p_tcp + p_udp);
            if (total % 0xFFFF)
                return O_CSUM;
        }
    }
    return O_OK;
}

/* rxpipe._whole's checks after the layout (one datagram of n bytes holding a whole super-packet):
 * lengths, flags, then rxpipe._whole_csums_ok: IPv4 header checksums valid; TCP and non-zero nested UDP
 * checksums valid or exactly the pseudo-header sum (CHECKSUM_PARTIAL).  An outcome code. */
static int rx_whole_check(const uint8_t *buf, size_t n, const rx_layout *L, int verify)
{
    const size_t G = L->G;
    if (!rx_lengths_fit(buf, L, (long)n))
        return O_LENGTHS;
    if (buf[G + L->tcp + 13] & (0x02 | 0x04 | 0x20 | 0x80))
        return O_FLAGS;
    if (!verify)
        return O_OK;
    for (int k = 0; k < L->n4; k++) {
        size_t o = G + L->ip4[k];
        if (un_sum(buf + o, (size_t)(buf[o] & 0xF) * 4, 0) % 0xFFFF)
            return O_CSUM;
    }
    for (int k = -1; k < L->nu; k++) {
        size_t off, ip, field;
        int v6;
        unsigned proto;
        if (k < 0) {
            off = L->tcp, ip = L->tcp_ip, v6 = L->tcp_ip_v6, proto = 6, field = 16;
        } else {
            if (!L->udp_has[k])
                continue;
            off = L->udp[k], ip = L->udp_ip[k], v6 = L->udp_v6[k], proto = 17, field = 6;
        }
        uint32_t pseudo = rx_pseudo(buf + G + ip, v6, proto, n - G - off);
        const uint8_t *seg = buf + G + off;
        if ((rx_sum_mod(seg, n - G - off) + pseudo) % 0xFFFF == 0)
            continue;
        if (un_get16(seg + field) != pseudo)
            return O_CSUM;
    }
    return O_OK;
}

static int rx_offsets(PyObject *seq, size_t *out, int *n, const char *what)
{
    if (!PyTuple_Check(seq) || PyTuple_GET_SIZE(seq) > MAX_L) {
        PyErr_Format(PyExc_ValueError, "rx_coalesce: %s must be a tuple of at most %d", what, MAX_L);
        return -1;
    }
    *n = (int)PyTuple_GET_SIZE(seq);
    for (int i = 0; i < *n; i++) {
        Py_ssize_t v = PyLong_AsSsize_t(PyTuple_GET_ITEM(seq, i));
        if (v < 0) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "rx_coalesce: negative offset in %s", what);
            return -1;
        }
        out[i] = (size_t)v;
    }
    return 0;
}

static PyObject *native_rx_coalesce(PyObject *self, PyObject *args)
{
    Py_buffer b, kf, kl;
    Py_ssize_t count, row_len, last_len, G, H, tcp_ip, tcp;
    PyObject *ip4, *ip6, *udp;
    int tcp_ip_v6, verify;
    if (!PyArg_ParseTuple(args, "y*nnnnnO!O!O!npny*y*p", &b, &count, &row_len, &last_len, &G, &H, &PyTuple_Type,
                          &ip4, &PyTuple_Type, &ip6, &PyTuple_Type, &udp, &tcp_ip, &tcp_ip_v6, &tcp, &kf, &kl,
                          &verify))
        return NULL;
    PyObject *result = NULL;
    rx_layout L;
    memset(&L, 0, sizeof(L));
    L.G = (size_t)G;
    L.H = (size_t)H;
    L.tcp_ip = (size_t)tcp_ip;
    L.tcp_ip_v6 = tcp_ip_v6;
    L.tcp = (size_t)tcp;
    size_t tmp[MAX_L];
    int n;
    /* ip4: ((off, innermost), ...) */
    if (PyTuple_GET_SIZE(ip4) > MAX_L || PyTuple_GET_SIZE(udp) > MAX_L) {
        PyErr_SetString(PyExc_ValueError, "rx_coalesce: too many headers");
        goto out;
    }
    L.n4 = (int)PyTuple_GET_SIZE(ip4);
    for (int i = 0; i < L.n4; i++) {
        PyObject *e = PyTuple_GET_ITEM(ip4, i);
        Py_ssize_t off;
        int inner;
        if (!PyArg_ParseTuple(e, "np", &off, &inner))
            goto out;
        if (off < 0) {
            PyErr_SetString(PyExc_ValueError, "rx_coalesce: negative offset");
            goto out;
        }
        L.ip4[i] = (size_t)off;
        L.inner4[i] = inner;
    }
    if (rx_offsets(ip6, tmp, &n, "ip6") < 0)
        goto out;
    L.n6 = n;
    memcpy(L.ip6, tmp, sizeof(tmp));
    L.nu = (int)PyTuple_GET_SIZE(udp);
    for (int i = 0; i < L.nu; i++) {
        Py_ssize_t off, ipo;
        int has, v6;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(udp, i), "npnp", &off, &has, &ipo, &v6))
            goto out;
        if (off < 0 || ipo < 0) {
            PyErr_SetString(PyExc_ValueError, "rx_coalesce: negative offset");
            goto out;
        }
        L.udp[i] = (size_t)off;
        L.udp_has[i] = has;
        L.udp_ip[i] = (size_t)ipo;
        L.udp_v6[i] = v6;
    }
    /* bounds: every field read lies within the first G + H bytes of every row, the rows in the buffer */
    size_t GH = L.G + L.H;
    int single = count == 0; /* one datagram as a 1-segment run: the row checks, PSH/FIN allowed */
    if (single)
        count = 1;
    int ok = count >= 1 && G >= 0 && H > 0 && row_len > 0 && (size_t)row_len > GH && (size_t)last_len > GH &&
             last_len <= row_len && (count - 1) * row_len + last_len <= b.len && kf.len >= (Py_ssize_t)GH &&
             kl.len >= (Py_ssize_t)GH && L.tcp + 20 <= L.H && L.tcp_ip + (L.tcp_ip_v6 ? 40 : 20) <= L.H &&
             L.tcp_ip < L.tcp;
    for (int i = 0; ok && i < L.n4; i++)
        ok = L.ip4[i] + 20 <= L.H && L.ip4[i] + (size_t)(((const uint8_t *)b.buf)[L.G + L.ip4[i]] & 0xF) * 4 <= L.H;
    for (int i = 0; ok && i < L.n6; i++)
        ok = L.ip6[i] + 40 <= L.H;
    for (int i = 0; ok && i < L.nu; i++)
        ok = L.udp[i] + 8 <= L.H && L.udp[i] < L.tcp && L.udp_ip[i] + (L.udp_v6[i] ? 40 : 20) <= L.H;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "rx_coalesce: layout does not fit the rows");
        goto out;
    }
    const uint8_t *buf = b.buf;
    int code;
    if (count == 1 && !single) { /* one datagram holding a whole super-packet: rxpipe._whole's checks, no gather */
        Py_BEGIN_ALLOW_THREADS
        code = rx_whole_check(buf, (size_t)row_len, &L, verify);
        Py_END_ALLOW_THREADS
        result = PyLong_FromLong(code);
        goto out;
    }
    Py_BEGIN_ALLOW_THREADS
    code = rx_check(buf, (size_t)count, (size_t)row_len, (size_t)last_len, &L, kf.buf, kl.buf, verify, single);
    Py_END_ALLOW_THREADS
    if (code != O_OK) {
        result = PyLong_FromLong(code);
        goto out;
    }
    size_t mss = (size_t)row_len - GH, lastp = (size_t)last_len - GH;
    PyObject *payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((size_t)(count - 1) * mss + lastp));
    if (payload == NULL)
        goto out;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(payload);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count - 1; i++, dst += mss)
        memcpy(dst, buf + i * row_len + GH, mss);
    memcpy(dst, buf + (count - 1) * row_len + GH, lastp);
    Py_END_ALLOW_THREADS
    const uint8_t *last = buf + (count - 1) * row_len;
    PyObject *first_ids = PyTuple_New(L.n4), *last_ids = PyTuple_New(L.n4);
    for (int k = 0; first_ids && last_ids && k < L.n4; k++) {
        PyTuple_SET_ITEM(first_ids, k, PyLong_FromLong(un_get16(buf + L.G + L.ip4[k] + 4)));
        PyTuple_SET_ITEM(last_ids, k, PyLong_FromLong(un_get16(last + L.G + L.ip4[k] + 4)));
    }
    if (first_ids && last_ids && !PyErr_Occurred())
        result = Py_BuildValue("(NkkNN)", payload, (unsigned long)last[L.G + L.tcp + 13],
                               (unsigned long)un_get32(buf + L.G + L.tcp + 4), first_ids, last_ids);
    else {
        Py_DECREF(payload);
        Py_XDECREF(first_ids);
        Py_XDECREF(last_ids);
    }
out:
    PyBuffer_Release(&b);
    PyBuffer_Release(&kf);
    PyBuffer_Release(&kl);
    return result;
}

/* rx_same(buf, ref, keep, csum_offs) -> bool: does the first row carry the same headers as `ref` (the first
 * row of an earlier read) on the `keep` mask, with the nested UDP checksums at `csum_offs` zero/non-zero
 * alike?  Then the reference's layout parse of `ref` holds for `buf` too (rxnative.Receiver). */
static PyObject *native_rx_same(PyObject *self, PyObject *args)
{
    Py_buffer b, ref, keep;
    PyObject *offs;
    if (!PyArg_ParseTuple(args, "y*y*y*O!", &b, &ref, &keep, &PyTuple_Type, &offs))
        return NULL;
    int same = b.len >= ref.len && keep.len >= ref.len;
    const uint8_t *x = b.buf, *r = ref.buf, *k = keep.buf;
    if (same && un_masked_differs(x, r, k, (size_t)ref.len))
        same = 0;
    for (Py_ssize_t i = 0; same && i < PyTuple_GET_SIZE(offs); i++) {
        Py_ssize_t o = PyLong_AsSsize_t(PyTuple_GET_ITEM(offs, i));
        if (o < 0 || o + 2 > ref.len) {
            same = 0;
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "rx_same: checksum offset outside the headers");
            break;
        }
        if (((x[o] | x[o + 1]) != 0) != ((r[o] | r[o + 1]) != 0))
            same = 0;
    }
    PyBuffer_Release(&b);
    PyBuffer_Release(&ref);
    PyBuffer_Release(&keep);
    if (PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(same);
}

/* rx_super(hdr, payload_len, mss, ip4, ip6, udp, tcp_ip, tcp_ip_v6, tcp, fold) -> (vnet, nested, headers) | None
 * rxpipe._super_write's byte work: the super-packet's headers (IPv4 total lengths and header checksums,
 * IPv6 payload lengths, the TCP checksum as the pseudo-header sum, the nested UDP length and partial
 * checksum; or, folded, the one carried level restored in front with its outermost UDP checksum partial)
 * and its virtio_net_hdr.  fold: None or bytes(flags, l2, l3, tun) + the carried headers.  None when a
 * length would exceed 65535 (the reference then drops the run as fold_too_large). */
/* rx_super's byte work on a parsed layout (also csrc/rxbatch.c's data path): writes the headers to h
 * (capacity 1024), the restored carried level to nested (capacity MAX_FOLD_HDRS, *shift its length) and the
 * virtio_net_hdr to vnet.  fold: NULL or (flags, l2, l3, tun) + the carried headers (flen bytes).
 * 1: done; 0: a length would exceed 65535 (None); -1: the layout or the fold level does not fit (*why). */
int rx_super_build(const uint8_t *hdr, size_t H, size_t payload_len, size_t mss, const size_t *ip4, int n4,
                   const size_t *ip6, int n6, int nu, size_t u, int has, size_t nip, int uv6, size_t tcp_ip,
                   int tcp_ip_v6, size_t tcp, const uint8_t *f, size_t flen, uint8_t *h, uint8_t *nested,
                   size_t *shift_out, uint8_t *vnet, const char **why)
{
    size_t shift = 0;
    if (H > 1024 || mss > 0xFFFF || tcp + 20 > H || tcp_ip + (tcp_ip_v6 ? 40 : 20) > H || n4 > MAX_L || n6 > MAX_L ||
        nu > 1) {
        *why = "rx_super: layout does not fit the headers";
        return -1;
    }
    memcpy(h, hdr, H);
    size_t frame_len = H + payload_len;
    for (int i = 0; i < n4; i++) {
        size_t off = ip4[i];
        if (off + 20 > H || off + (size_t)(h[off] & 0xF) * 4 > H) {
            *why = "rx_super: ipv4 offset outside the headers";
            return -1;
        }
        if (frame_len - off > 0xFFFF)
            return 0;
        un_put16(h + off + 2, (uint16_t)(frame_len - off));
        un_put16(h + off + 10, 0);
        un_put16(h + off + 10, un_csum(un_sum(h + off, (size_t)(h[off] & 0xF) * 4, 0)));
    }
    for (int i = 0; i < n6; i++) {
        size_t off = ip6[i];
        if (off + 40 > H) {
            *why = "rx_super: ipv6 offset outside the headers";
            return -1;
        }
        if (frame_len - off - 40 > 0xFFFF)
            return 0;
        un_put16(h + off + 4, (uint16_t)(frame_len - off - 40));
    }
    un_put16(h + tcp + 16, (uint16_t)rx_pseudo(h + tcp_ip, tcp_ip_v6, 6, frame_len - tcp));
    unsigned gso_type = tcp_ip_v6 ? 4 : 1, flags = 1;
    size_t outer_th = 0;
    int tunnel = 0;
    if (f != NULL) {
        if (flen < 4) {
            *why = "rx_super: fold level too short";
            return -1;
        }
        unsigned cf = f[0];
        size_t l2 = f[1], l3 = f[2], tun = f[3], n = flen - 4;
        int v6 = (cf & F_V6) != 0;
        if (n > MAX_FOLD_HDRS || l2 + l3 + 8 + tun != n || l3 < (v6 ? 40u : 20u)) {
            *why = "rx_super: fold level malformed";
            return -1;
        }
        if (l3 + 8 + tun + frame_len > 0xFFFF)
            return 0;
        memcpy(nested, f + 4, n);
        size_t ip = l2, uo = l2 + l3, udp_len = 8 + tun + frame_len;
        size_t ip_len = (v6 ? l3 - 40 : l3) + udp_len;
        if (cf & F_LEN_ZEROED) {
            un_put16(nested + ip + (v6 ? 4 : 2), (uint16_t)ip_len);
            un_put16(nested + uo + 4, (uint16_t)udp_len);
        }
        if (cf & F_CSUM_ZEROED) {
            if (!v6)
                un_put16(nested + ip + 10, un_csum(un_sum(nested + ip, l3, 0)));
            if (cf & F_UDP_CSUM) {
                un_put16(nested + uo + 6, (uint16_t)rx_pseudo(nested + ip, v6, 17, udp_len));
                flags |= 8;
            }
        }
        outer_th = l2 + l3;
        gso_type |= v6 ? 0x40 : 0x20;
        shift = n;
        tunnel = 1;
    } else if (nu == 1) {
        if (u + 8 > H || nip + (uv6 ? 40 : 20) > H) {
            *why = "rx_super: udp offset outside the headers";
            return -1;
        }
        un_put16(h + u + 4, (uint16_t)(frame_len - u));
        if (has) {
            un_put16(h + u + 6, (uint16_t)rx_pseudo(h + nip, uv6, 17, frame_len - u));
            flags |= 8;
        }
        outer_th = u;
        gso_type |= uv6 ? 0x40 : 0x20;
        tunnel = 1;
    }
    memset(vnet, 0, 24);
    vnet[0] = (uint8_t)flags;
    vnet[1] = (uint8_t)gso_type;
    uint16_t le[11] = {(uint16_t)(shift + H), (uint16_t)mss, (uint16_t)(shift + tcp), 16, 0, 0, 0, 0, 0,
                       (uint16_t)outer_th, (uint16_t)(tunnel ? shift + tcp_ip : 0)};
    for (int i = 0; i < 11; i++) {
        vnet[2 + 2 * i] = (uint8_t)le[i];
        vnet[3 + 2 * i] = (uint8_t)(le[i] >> 8);
    }
    *shift_out = shift;
    return 1;
}

/* rx_super(hdr, payload_len, mss, ip4, ip6, udp, tcp_ip, tcp_ip_v6, tcp, fold) -> (vnet, nested, headers) | None
 * rxpipe._super_write's byte work: the super-packet's headers (IPv4 total lengths and header checksums,
 * IPv6 payload lengths, the TCP checksum as the pseudo-header sum, the nested UDP length and partial
 * checksum; or, folded, the one carried level restored in front with its outermost UDP checksum partial)
 * and its virtio_net_hdr.  fold: None or bytes(flags, l2, l3, tun) + the carried headers.  None when a
 * length would exceed 65535 (the reference then drops the run as fold_too_large). */
static PyObject *native_rx_super(PyObject *self, PyObject *args)
{
    Py_buffer hb;
    Py_ssize_t payload_len, mss, tcp_ip, tcp;
    PyObject *ip4, *ip6, *udp, *fold;
    int tcp_ip_v6;
    if (!PyArg_ParseTuple(args, "y*nnO!O!O!npnO", &hb, &payload_len, &mss, &PyTuple_Type, &ip4, &PyTuple_Type, &ip6,
                          &PyTuple_Type, &udp, &tcp_ip, &tcp_ip_v6, &tcp, &fold))
        return NULL;
    PyObject *result = NULL;
    uint8_t h[1024], nested[MAX_FOLD_HDRS], vnet[24];
    size_t o4[MAX_L], o6[MAX_L], u = 0, nip = 0, shift = 0;
    int n4 = 0, n6 = 0, nu = (int)PyTuple_GET_SIZE(udp), has = 0, uv6 = 0;
    if (payload_len < 0 || mss < 0 || tcp_ip < 0 || tcp < 0 || PyTuple_GET_SIZE(ip4) > MAX_L ||
        PyTuple_GET_SIZE(ip6) > MAX_L || nu > 1 || (fold != Py_None && !PyBytes_Check(fold))) {
        PyErr_SetString(PyExc_ValueError, "rx_super: layout does not fit the headers");
        goto out;
    }
    n4 = (int)PyTuple_GET_SIZE(ip4);
    n6 = (int)PyTuple_GET_SIZE(ip6);
    for (int i = 0; i < n4 + n6; i++) {
        Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(i < n4 ? ip4 : ip6, i < n4 ? i : i - n4));
        if (off < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "rx_super: ip offset outside the headers");
            goto out;
        }
        if (i < n4)
            o4[i] = (size_t)off;
        else
            o6[i - n4] = (size_t)off;
    }
    if (nu == 1) {
        Py_ssize_t uu, nn;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(udp, 0), "npnp", &uu, &has, &nn, &uv6))
            goto out;
        if (uu < 0 || nn < 0) {
            PyErr_SetString(PyExc_ValueError, "rx_super: udp offset outside the headers");
            goto out;
        }
        u = (size_t)uu;
        nip = (size_t)nn;
    }
    const char *why = NULL;
    int r = rx_super_build(hb.buf, (size_t)hb.len, (size_t)payload_len, (size_t)mss, o4, n4, o6, n6, nu, u, has, nip,
                           uv6, (size_t)tcp_ip, tcp_ip_v6, (size_t)tcp,
                           fold != Py_None ? (const uint8_t *)PyBytes_AS_STRING(fold) : NULL,
                           fold != Py_None ? (size_t)PyBytes_GET_SIZE(fold) : 0, h, nested, &shift, vnet, &why);
    if (r < 0) {
        PyErr_SetString(PyExc_ValueError, why);
        goto out;
    }
    if (r == 0) {
        result = Py_NewRef(Py_None);
        goto out;
    }
    result = Py_BuildValue("(y#y#y#)", (const char *)vnet, (Py_ssize_t)24, (const char *)nested, (Py_ssize_t)shift,
                           (const char *)h, (Py_ssize_t)hb.len);
out:
    PyBuffer_Release(&hb);
    return result;
}

static PyMethodDef rx_methods[] = {
    {"rx_rows", native_rx_rows, METH_VARARGS,
     "rx_rows(buf, count, row_len, last_len, vni, opt_class, folds=None) -> list: the one-datagram path per "
     "row (int >= 0: write at offset code & 0xFFFF, bit 16 hint; -1 defer; <= -2 drop RX_REASONS[-2 - code]; "
     "(headers, offset): a FOLD row unfolded with the first matching template in the list folds)"},
    {"rx_super", native_rx_super, METH_VARARGS,
     "rx_super(hdr, payload_len, mss, ip4, ip6, udp, tcp_ip, tcp_ip_v6, tcp, fold) -> (vnet, nested, headers) "
     "| None: the super-packet's headers and virtio_net_hdr (rxpipe._super_write)"},
    {"rx_same", native_rx_same, METH_VARARGS,
     "rx_same(buf, ref, keep, csum_offs) -> bool: the first row's headers equal ref's on the keep mask"},
    {"rx_coalesce", native_rx_coalesce, METH_VARARGS,
     "rx_coalesce(buf, count, row_len, last_len, G, H, ip4, ip6, udp, tcp_ip, tcp_ip_v6, tcp, keep_full, "
     "keep_last, verify) -> outcome code | (payload, last_flags, seq0, first_ids, last_ids)"},
    {NULL, NULL, 0, NULL},
};

int udpnest_rx_init(PyObject *module)
{
    if (PyModule_AddFunctions(module, rx_methods) < 0)
        return -1;
    PyObject *reasons = PyTuple_New(R_COUNT);
    if (reasons == NULL)
        return -1;
    for (int i = 0; i < R_COUNT; i++)
        PyTuple_SET_ITEM(reasons, i, PyUnicode_FromString(rx_reasons[i]));
    if (PyModule_AddObject(module, "RX_REASONS", reasons) < 0) {
        Py_DECREF(reasons);
        return -1;
    }
    size_t no = sizeof(rx_outcomes) / sizeof(rx_outcomes[0]);
    PyObject *outcomes = PyTuple_New((Py_ssize_t)no);
    if (outcomes == NULL)
        return -1;
    for (size_t i = 0; i < no; i++)
        PyTuple_SET_ITEM(outcomes, (Py_ssize_t)i, PyUnicode_FromString(rx_outcomes[i]));
    if (PyModule_AddObject(module, "RX_OUTCOMES", outcomes) < 0) {
        Py_DECREF(outcomes);
        return -1;
    }
    return 0;
}
