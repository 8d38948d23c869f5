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

/* One's complement sum of big-endian 16-bit words (an odd last byte is padded with zero), not folded
 * below 64 bits: add partial sums freely, fold once with un_fold. */
static inline uint64_t un_sum(const uint8_t *p, size_t n, uint64_t acc)
{
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

static inline uint16_t un_fold(uint64_t s)
{
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    return (uint16_t)s;
}

/* The Internet checksum of a sum: ~fold. */
static inline uint16_t un_csum(uint64_t s) { return (uint16_t)~un_fold(s); }

#endif
