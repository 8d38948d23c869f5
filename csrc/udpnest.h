/* udpnest native core: shared declarations and helpers.
 *
 * Rules for every function in csrc/ (docs/architecture.md, "The native core"):
 *  - bounds are checked before every read: a length is validated against the buffer before it is used;
 *  - no policy: peer modes, FDB decisions, probing stay in Python; the core transforms bytes and does
 *    the syscalls it is handed file descriptors for;
 *  - every rejection is a drop reason with the same name as udpnest.wire.errors.Reason (the Python engine
 *    is the reference; tests/test_engine_diff.py proves both give the same bytes and the same reasons).
 */
#ifndef UDPNEST_H
#define UDPNEST_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>

/* Each half registers its functions on the module (module.c calls both). */
int udpnest_tx_init(PyObject *module);
int udpnest_rx_init(PyObject *module);
int udpnest_txburst_init(PyObject *module); /* csrc/txburst.c: the TX burst (after udpnest_tx_init) */
/* csrc/tx.c: (host, port[, flow, scope]) -> sockaddr, -1 with the error set (also used by txburst.c) */
int un_sockaddr(PyObject *addr, struct sockaddr_storage *ss, socklen_t *len);
/* csrc/tx.c: one sendmsg, UDP_SEGMENT=seg for more than one datagram, GIL released; errno in *err */
ssize_t un_send_segments(int fd, const struct sockaddr_storage *ss, socklen_t sl, const void *buf, size_t len,
                         unsigned seg, int flags, int *err);
int udpnest_rxbatch_init(PyObject *module);

/* Round robin over the fds of one poll (the TAP's queues in txburst.c, the RX queues' sockets in rxbatch.c; at
 * most 64): which reported anything, as a bit mask, and the next of those after cur (cur itself last), -1: none. */
static inline uint64_t un_poll_ready(const struct pollfd *p, int n)
{
    uint64_t m = 0;
    for (int i = 0; i < n; i++)
        if (p[i].revents) /* POLLIN, or an error the next read reports */
            m |= (uint64_t)1 << i;
    return m;
}

static inline int un_next_ready(uint64_t ready, int cur, int n)
{
    for (int k = 1; k <= n; k++) {
        int i = (cur + k) % n;
        if (ready >> i & 1)
            return i;
    }
    return -1;
}

/* ---- The TX cores of csrc/tx.c (pure: pointers, lengths, plain C values, caller-provided buffers; no
 * Python objects).  The Python entries (vnet_check, finish_csum, hint_prefix, fold_one, fold_gso,
 * plain_gso) are thin wrappers around them, and csrc/txburst.c calls them per frame directly.  A core
 * returns 0 (done), or -1: a reject (un_reject filled: the Reason's value and a detail; r may be NULL) or
 * a deferral to the Python reference (the functions that defer say so). */
typedef struct {
    const char *reason; /* the Reason's value, e.g. "bad_vnet" */
    char detail[200];
} un_reject;
#define UN_MAX_PORTS 32
typedef struct {
    unsigned port[UN_MAX_PORTS], enc[UN_MAX_PORTS], n; /* (udp port, encap 1 VXLAN | 2 GPE | 3 Geneve) */
} un_ports;
/* ports (a sequence of (port, encap)) -> *out: 0; 1 more than UN_MAX_PORTS (no error set); -1 error set */
int un_parse_ports(PyObject *ports, un_ports *out);
#define UN_VNET_HDR_LEN 24
/* VnetHdr.check on p[0:n]: the 13 fields in f; -1 reject (truncated_vnet, bad_vnet) */
int un_vnet_check(const uint8_t *p, size_t n, unsigned f[13], un_reject *r);
/* the frame in[0:n] with its partial checksum (csum_start cs, csum_offset co) finished, written to out
 * (n bytes, may be in itself); -1 reject (bad_vnet: beyond the frame; out untouched) */
int un_finish_csum(const uint8_t *in, size_t n, unsigned cs, unsigned co, uint8_t *out, un_reject *r);
/* fold.gro_hint_for: the hint-mode Geneve header into h (8 or 16 bytes: its length), -1 defer */
int un_hint_prefix(const uint8_t *f, size_t n, unsigned vni, const un_ports *pt, int gso, uint8_t h[16]);
#define UN_MAX_PREFIX (8 + 252) /* a Geneve header with its options */
/* fold.fold of a single frame: the header into prefix (*P bytes), the inner frame at f + *pos; -1 defer */
int un_fold_one(const uint8_t *f, size_t n, unsigned vni, unsigned opt_class, const un_ports *pt,
                unsigned max_levels, uint8_t prefix[UN_MAX_PREFIX], size_t *P, size_t *pos);
/* The plan of a super-packet's segmentation (fold_gso, plain_gso): the rows are prefix + the headers
 * of f + seg_off + the payload, row_len bytes each (the last last_len), nbytes in all. */
#define UN_MAX_IP 8
#define UN_MAX_UDP 8
struct un_layout {
    unsigned ip4[UN_MAX_IP], n4, ip6[UN_MAX_IP], n6, udp[UN_MAX_UDP], udp_has[UN_MAX_UDP], nu;
    unsigned tcp_ip, tcp_ip_v6, tcp, hdr_len, l4;
};
typedef struct {
    uint8_t prefix_buf[UN_MAX_PREFIX];
    const uint8_t *prefix; /* prefix_buf (fold) or the caller's (plain, hint): valid while the plan is used */
    size_t P, pos, seg_off;
    struct un_layout L;
    long mss;
    unsigned flags;
    size_t row_len, count, last_len, nbytes;
} un_gso_plan;
/* fold_gso's plan for f[0:n] (a TCP super-packet with 1..max_levels foldable levels); -1 defer */
int un_fold_gso_plan(const uint8_t *f, size_t n, unsigned vni, unsigned opt_class, const un_ports *pt,
                     unsigned max_levels, unsigned max_dg, unsigned gso_size, un_gso_plan *pl);
/* plain_gso's plan: f behind prefix[0:P] (not copied), nested UDP header at nested (0: none); -1 defer */
int un_plain_gso_plan(const uint8_t *prefix, size_t P, const uint8_t *f, size_t n, unsigned nested,
                      unsigned max_dg, unsigned gso_size, unsigned flags, un_gso_plan *pl);
/* the rows of a plan into out (pl->nbytes bytes); f[0:n] the frame the plan was made for.  No Python. */
void un_gso_segment(const un_gso_plan *pl, const uint8_t *f, size_t n, uint8_t *out);

/* The one-datagram path of csrc/rx.c, shared with csrc/rxbatch.c (pure, no Python objects). */
int rx_one(const uint8_t *p, size_t n, long vni, long opt_class);
const uint8_t *rx_match(const uint8_t *tpl, size_t tlen, const uint8_t *p, size_t G);
long rx_restore(const uint8_t *lv0, size_t lvlen, const uint8_t *p, size_t G, const uint8_t *inner,
                size_t inner_len, uint8_t *out);
int rx_check_l3(const uint8_t *f, size_t fl);
#define UN_MAX_FOLD_HDRS 512 /* rx_restore's output capacity (rx.c MAX_FOLD_HDRS) */
#define UN_R_FOLD_TOO_LARGE 17 /* rx.c's reason code of fold_too_large (RX_REASONS[17]) */

/* The coalescing checks of csrc/rx.c on a parsed layout, shared with csrc/rxbatch.c's data path. */
#define MAX_L 8 /* IPv4 / IPv6 / UDP headers per layout (1-3 levels need at most 4 / 4 / 3) */
typedef struct {
    size_t G, H, tcp_ip, tcp;
    int tcp_ip_v6;
    int n4, n6, nu;
    size_t ip4[MAX_L];
    int inner4[MAX_L];
    size_t ip6[MAX_L];
    size_t udp[MAX_L], udp_ip[MAX_L];
    int udp_has[MAX_L], udp_v6[MAX_L];
} rx_layout;
#define UN_O_OK 0
int rx_check(const uint8_t *buf, size_t count, size_t row_len, size_t last_len, const rx_layout *L,
             const uint8_t *keep_full, const uint8_t *keep_last, int verify, int single);
int rx_super_build(const uint8_t *hdr, size_t H, size_t payload_len, size_t mss, const size_t *ip4, int n4,
                   const size_t *ip6, int n6, int nu, size_t u, int has, size_t nip, int uv6, size_t tcp_ip,
                   int tcp_ip_v6, size_t tcp, const uint8_t *f, size_t flen, uint8_t *h, uint8_t *nested,
                   size_t *shift_out, uint8_t *vnet, const char **why);

static inline uint16_t un_get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t un_get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void un_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void un_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* The sum of the little-endian 32-bit words of p[0:n] (n a multiple of 8) in a 64-bit accumulator: no
 * carry is lost for any n < 2^34.  32 bytes per step in SSE2 lanes (every x86-64) where the compiler
 * targets it, the rest 8 bytes at a time (tests/test_native_simd.py checks it against an RFC 1071 loop). */
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
static inline uint64_t un_sum_le(const uint8_t *p, size_t n)
{
    uint64_t s = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    __m128i a = zero, b = zero;
    while (n >= 32) {
        __m128i v0 = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i v1 = _mm_loadu_si128((const __m128i *)(const void *)(p + 16));
        a = _mm_add_epi64(a, _mm_unpacklo_epi32(v0, zero));
        b = _mm_add_epi64(b, _mm_unpackhi_epi32(v0, zero));
        a = _mm_add_epi64(a, _mm_unpacklo_epi32(v1, zero));
        b = _mm_add_epi64(b, _mm_unpackhi_epi32(v1, zero));
        p += 32;
        n -= 32;
    }
    uint64_t lanes[4];
    _mm_storeu_si128((__m128i *)(void *)lanes, a);
    _mm_storeu_si128((__m128i *)(void *)(lanes + 2), b);
    s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
#endif
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        s += (w & 0xFFFFFFFFu) + (w >> 32);
        p += 8;
        n -= 8;
    }
    return s;
}

/* One's complement sum of big-endian 16-bit words (an odd last byte is padded with zero), not folded
 * below 64 bits: add partial sums freely, fold once with un_fold.  The result is congruent to the plain
 * big-endian word sum modulo 0xFFFF and is zero exactly when every word is zero, so un_fold / un_csum /
 * "% 0xFFFF" of it (and of sums of it) are exactly those of the plain sum.  The bulk is summed as
 * little-endian words (one's complement sums are byte-order independent: RFC 1071 2.(B)), folded to 16
 * bits with end-around carry and byte-swapped back. */
static inline uint64_t un_sum(const uint8_t *p, size_t n, uint64_t acc)
{
    if (n >= 64) {
        size_t bulk = n & ~(size_t)7; /* an even number of bytes: the word parity of the tail is kept */
        uint64_t le = un_sum_le(p, bulk);
        while (le >> 16)
            le = (le & 0xFFFF) + (le >> 16);
        acc += ((le & 0xFF) << 8) | (le >> 8);
        p += bulk;
        n -= bulk;
    }
    /* 32-bit big-endian words into a 64-bit accumulator: no carry is lost for any n < 2^32 */
    while (n >= 4) {
        acc += (uint64_t)un_get32(p);
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        acc += un_get16(p);
        p += 2;
        n -= 2;
    }
    if (n)
        acc += (uint64_t)p[0] << 8;
    return acc;
}

/* un_sum(src, n, acc) while copying src[0:n] to dst (not overlapping): one pass over the payload of a
 * segment instead of a memcpy and a sum. */
static inline uint64_t un_copy_sum(uint8_t *dst, const uint8_t *src, size_t n, uint64_t acc)
{
    if (n < 64) {
        memcpy(dst, src, n);
        return un_sum(src, n, acc);
    }
    size_t bulk = n & ~(size_t)7, left = bulk;
    const uint8_t *p = src;
    uint8_t *d = dst;
    uint64_t le = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    __m128i a = zero, b = zero;
    while (left >= 32) {
        __m128i v0 = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i v1 = _mm_loadu_si128((const __m128i *)(const void *)(p + 16));
        _mm_storeu_si128((__m128i *)(void *)d, v0);
        _mm_storeu_si128((__m128i *)(void *)(d + 16), v1);
        a = _mm_add_epi64(a, _mm_unpacklo_epi32(v0, zero));
        b = _mm_add_epi64(b, _mm_unpackhi_epi32(v0, zero));
        a = _mm_add_epi64(a, _mm_unpacklo_epi32(v1, zero));
        b = _mm_add_epi64(b, _mm_unpackhi_epi32(v1, zero));
        p += 32;
        d += 32;
        left -= 32;
    }
    uint64_t lanes[4];
    _mm_storeu_si128((__m128i *)(void *)lanes, a);
    _mm_storeu_si128((__m128i *)(void *)(lanes + 2), b);
    le = lanes[0] + lanes[1] + lanes[2] + lanes[3];
#endif
    memcpy(d, p, n - (size_t)(p - src)); /* the rest (< 32 bytes, or all without SSE2), summed below */
    le += un_sum_le(p, left);
    while (le >> 16)
        le = (le & 0xFFFF) + (le >> 16);
    acc += ((le & 0xFF) << 8) | (le >> 8);
    return un_sum(src + bulk, n - bulk, acc);
}

/* Whether a[j] != b[j] for some j < n with keep[j] != 0 (the coalescing header compare on a keep mask),
 * 16 bytes at a time with SSE2. */
static inline int un_masked_differs(const uint8_t *a, const uint8_t *b, const uint8_t *keep, size_t n)
{
    size_t j = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    for (; j + 16 <= n; j += 16) {
        __m128i va = _mm_loadu_si128((const __m128i *)(const void *)(a + j));
        __m128i vb = _mm_loadu_si128((const __m128i *)(const void *)(b + j));
        __m128i vk = _mm_loadu_si128((const __m128i *)(const void *)(keep + j));
        __m128i ok = _mm_or_si128(_mm_cmpeq_epi8(va, vb), _mm_cmpeq_epi8(vk, zero));
        if (_mm_movemask_epi8(ok) != 0xFFFF)
            return 1;
    }
#endif
    for (; j < n; j++)
        if (keep[j] && a[j] != b[j])
            return 1;
    return 0;
}

static inline uint16_t un_fold(uint64_t s)
{
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    return (uint16_t)s;
}

/* The Internet checksum of a sum: ~fold. */
static inline uint16_t un_csum(uint64_t s) { return (uint16_t)~un_fold(s); }

#endif
