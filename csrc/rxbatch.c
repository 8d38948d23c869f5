/* RX fast path of the native core: runs of small one-datagram reads (TCP ACKs), and the data reads of a flow
 * whose shape Python has parsed, without a Python round trip.
 *
 *  rx_batch(fd, tap_fd, buf, peers, width, vni, opt_class, folds, single_min, max_count, vnet, stop)
 *      -> (item, counts, drops, learned, err)
 *
 *  One call per wakeup of the endpoint's RX loop (udpnest.rxbatch, docs/architecture.md "RX fast path"):
 *  recvmsg(fd, buf) (blocking for the first datagram, MSG_DONTWAIT after it), and for each datagram that is
 *    - one datagram (no UDP_GRO cmsg, or gso_size >= its length), not truncated (MSG_TRUNC),
 *    - shorter than single_min (RxDriver.single_min: it is never tried as a single_run),
 *    - non-empty, from one of the peer addresses `peers` (width 4: IPv4, 16: IPv6; packed, concatenated;
 *      the caller decides which peers are allowed),
 *  the one-datagram path of csrc/rx.c (rx_one; FOLD rows whose header matches a template of `folds`,
 *  rx_match/rx_restore/rx_check_l3), then one writev(tap_fd, vnet + frame parts) or a drop code.
 *
 *  It stops at the first datagram it does not fully handle (a GRO read, a long or truncated or empty one,
 *  an unknown source (our own wake datagram included), a deferred row (echo, FOLD without template), or
 *  while the `stop` flag byte is set) and hands that datagram back: it stays in buf and `item` is
 *  (nbytes, gso_size, sockaddr bytes), exactly what UdpSocket.recv_into would have returned, so the Python
 *  path processes it unchanged and in order.  Nothing later has been received.  item None: the socket was
 *  empty (EAGAIN, also on the first call), max_count datagrams were handled, or a syscall failed (err: its
 *  errno; EINTR included, the caller returns to its loop so signals and the stop flag are seen).
 *
 *  counts: (reads, bytes, plain, hint, fold, tap_bytes, tap_errors, last_tap_errno, truncated, socket_drops
 *  (SO_RXQ_OVFL, -1 when no cmsg came), handled); drops: ((reason code, n), ...) as rx_rows' codes
 *  (RX_REASONS[code]); learned: ((peer index, source MAC), ...) of the written frames, one entry per MAC
 *  (its last peer), in the order they were last seen.
 *
 *  With a 13th argument `flows` (a tuple of up to two flows, udpnest.rxbatch.flow_args: rxnative.Receiver's
 *  cache entries last and prev; or None) it also takes the DATA reads of those flows (rxd_read / rxd_tail below):
 *  a multi-row UDP_GRO read from a peer whose first row hits an entry as Receiver._info tests it and that
 *  coalesces whole (rx_check) is gathered into a C-owned buffer and held while the next read is waiting, merged
 *  with it as rxpipe.merge does (a one-datagram read continuing or ending the run too, as single_run + merge),
 *  and finished as rxnative.finish + Endpoint._tap_write (rx_super_build, one writev); when the socket is empty
 *  the held run is finished (RxDriver.flush).  A read C does not take while it holds a run is handed back with
 *  the run (`held`), which the caller makes RxDriver.pending.  Nothing is touched before C knows it takes a read.
 *  The result is then (item, counts, drops, learned, err, data, held): data = (coalesced, merged,
 *  reads_per_super_packet_1, _2, _3, TAP bytes of the data writes, segments dropped by failed data writes,
 *  (segments * 4 + kind per super-packet written, ...), single_merged); held = None or (payload, hdr, ref,
 *  payload_len, mss, segments, seq0, next_seq, first_ids, last_ids, extendable, reads, peer index, flow index).
 *
 *  With a 14th argument `linger_ns` > 0 (udpnest.rxbatch.LINGER_NS) the call lingers: at EAGAIN, after the held run
 *  is finished exactly as above, it waits for the socket (rxb_linger: ppoll, the GIL still released, the stop flag
 *  looked at every RXB_STOP_SLICE_NS at least) and goes on, until linger_ns after the call's first datagram; it
 *  returns when that window ends with the socket empty (or, between runs, while datagrams keep coming), at the
 *  first datagram it does not take (as above: the wake-up datagram is one), at the stop flag, or when the socket
 *  reports a shutdown or an error.  Everything it returns is then up to one window late; 0: return at EAGAIN.
 *
 *  With a 15th argument `queues` (udpnest.io.udp.RxQueues.sched, an array('q'): [quantum K, current index, reads on
 *  it, fds[n], SO_RXQ_OVFL per socket, reads per socket]; n > 1) it serves the n SO_REUSEPORT sockets instead of fd,
 *  by RxQueues' rule (the Python path's, sharing this state): stay on the current socket while a run is held and
 *  for at most K reads; after K reads (no run held) or at EAGAIN (the held run finished first) one poll (timeout
 *  0) of all of them makes the next ready socket after the current one current; none ready: the EAGAIN handling
 *  above (linger on all the fds), and the call's first datagram waits in a poll of all the fds.  Every recvmsg is
 *  MSG_DONTWAIT except after a poll that reported more than POLLIN (a shutdown, an error), whose blocking recvmsg
 *  returns that at once; socket_drops then comes back per socket in `queues` (counts: -1).
 *
 *  Bounds: every length is checked before a read (rx_one and rx_restore do their own; a flow's offsets once
 *  per call in rxd_parse, the rows' lengths per read); the GIL is released for the whole receive/write loop (the
 *  FOLD templates and flows are parsed first, the buffers are pinned).
 */
#include "udpnest.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/uio.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#define RXB_UDP_GRO 104
#define RXB_SO_RXQ_OVFL 40
#define RXB_MAX_COUNT 1024
#define RXB_MAX_TEMPLATES 64
#define RXB_MAX_PEERS 4096
#define RXB_REASONS 32
#define RXB_MAX_WRITES (2 * RXB_MAX_COUNT + 2) /* a read finishes the held run and writes its own */

typedef struct {
    Py_ssize_t reads, bytes, plain, hint, fold, tap_bytes, tap_errors, handled, truncated;
    long long socket_drops;
    int tap_errno;
    Py_ssize_t drops[RXB_REASONS];
    int nlearn;
    int learn_peer[RXB_MAX_WRITES];
    uint8_t learn_mac[RXB_MAX_WRITES][6];
    /* the data path (rxd_*): reads coalesced, merged, reads_per_super_packet_1..3, TAP bytes of the data
     * writes, the segments their failed writes dropped, and each written super-packet's segment count */
    Py_ssize_t coalesced, merged, rps[4], dtap_bytes, dtap_drop, single_merged;
    int ndseg;
    Py_ssize_t dseg[RXB_MAX_WRITES];
} rxb_state;

/* index of the sender in peers, or -1 */
static int rxb_peer(const struct sockaddr_storage *sa, socklen_t salen, const uint8_t *peers, size_t npeers,
                    int width)
{
    const uint8_t *a = NULL;
    if (width == 4 && sa->ss_family == AF_INET && salen >= (socklen_t)sizeof(struct sockaddr_in))
        a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
    else if (width == 16 && sa->ss_family == AF_INET6 && salen >= (socklen_t)sizeof(struct sockaddr_in6) &&
             ((const struct sockaddr_in6 *)sa)->sin6_scope_id == 0) /* a scoped key is "addr%if": Python's */
        a = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (a == NULL)
        return -1;
    for (size_t i = 0; i < npeers; i++)
        if (memcmp(peers + i * (size_t)width, a, (size_t)width) == 0)
            return (int)i;
    return -1;
}

static void rxb_learn(rxb_state *S, int peer, const uint8_t *mac)
{
    /* one entry per MAC: a MAC seen again (from the same or another peer) moves to the end with its
     * latest peer, so applying the entries in order ends in the same FDB state as learning per write */
    for (int i = 0; i < S->nlearn; i++) {
        if (memcmp(S->learn_mac[i], mac, 6) != 0)
            continue;
        if (i == S->nlearn - 1 && S->learn_peer[i] == peer)
            return;
        memmove(&S->learn_mac[i], &S->learn_mac[i + 1], (size_t)(S->nlearn - 1 - i) * 6);
        memmove(&S->learn_peer[i], &S->learn_peer[i + 1], (size_t)(S->nlearn - 1 - i) * sizeof(int));
        S->nlearn--;
        break;
    }
    if (S->nlearn >= RXB_MAX_WRITES)
        return; /* never: at most one entry per write */
    memcpy(S->learn_mac[S->nlearn], mac, 6);
    S->learn_peer[S->nlearn] = peer;
    S->nlearn++;
}

static ssize_t rxb_writev(int fd, struct iovec *iov, int n)
{
    ssize_t w;
    do
        w = writev(fd, iov, n);
    while (w < 0 && errno == EINTR); /* as os.writev (PEP 475) */
    return w;
}

typedef struct {
    const uint8_t *p;
    size_t len;
} rxb_tpl;

/* 1: handled (written or dropped); 0: hand back to Python (deferred row) */
static int rxb_one(rxb_state *S, const uint8_t *p, size_t n, int peer, long vni, long opt_class,
                   const rxb_tpl *tpl, int ntpl, int tap_fd, const uint8_t *vnet, size_t vlen)
{
    int code = rx_one(p, n, vni, opt_class);
    uint8_t hdrs[UN_MAX_FOLD_HDRS];
    struct iovec iov[3];
    int niov, kind; /* 0 plain, 1 hint, 2 fold */
    const uint8_t *first;
    size_t first_len;
    iov[0].iov_base = (void *)vnet;
    iov[0].iov_len = vlen;
    if (code == -1) { /* FOLD / echo: only a FOLD header matching a validated template is ours */
        size_t G = 8 + (size_t)(p[0] & 0x3F) * 4; /* rx_one returned -1: n >= 8 and G <= n */
        long hl = -2;
        for (int k = 0; k < ntpl; k++) {
            const uint8_t *lv = rx_match(tpl[k].p, tpl[k].len, p, G);
            if (lv == NULL)
                continue;
            hl = rx_restore(lv, tpl[k].len - (size_t)(lv - tpl[k].p), p, G, p + G, n - G, hdrs);
            break;
        }
        if (hl == -2)
            return 0; /* no template (or a malformed one): the reference decides (rx_fold_row's deferral) */
        if (hl == -1) {
            S->drops[UN_R_FOLD_TOO_LARGE]++;
            return 1;
        }
        int r = rx_check_l3(p + G, n - G);
        if (r >= 0) {
            S->drops[r]++;
            return 1;
        }
        iov[1].iov_base = hdrs;
        iov[1].iov_len = (size_t)hl;
        iov[2].iov_base = (void *)(p + G);
        iov[2].iov_len = n - G;
        niov = 3;
        kind = 2;
        first = hdrs;
        first_len = (size_t)hl;
    } else if (code <= -2) {
        int r = -2 - code;
        if (r < RXB_REASONS)
            S->drops[r]++;
        return 1;
    } else {
        size_t off = (size_t)(code & 0xFFFF);
        if (off > n)
            return 0; /* never: rx_one checked G <= n */
        iov[1].iov_base = (void *)(p + off);
        iov[1].iov_len = n - off;
        niov = 2;
        kind = code >> 16 ? 1 : 0;
        first = p + off;
        first_len = n - off;
    }
    ssize_t w = rxb_writev(tap_fd, iov, niov);
    if (w < 0) {
        S->tap_errors++;
        S->tap_errno = errno;
        return 1;
    }
    S->tap_bytes += w - (ssize_t)vlen;
    if (kind == 0)
        S->plain++;
    else if (kind == 1)
        S->hint++;
    else
        S->fold++;
    if (first_len >= 12)
        rxb_learn(S, peer, first + 6);
    return 1;
}

/* --- the data path: multi-row UDP_GRO reads of the flow the Python side has parsed (rxnative.Receiver.last) --- */

#define RXD_MAX_REF 2048 /* Geneve header (<= 260) + frame headers (<= 1024) */
#define RXD_MAX_SUPER (65535 - 64) /* rxpipe.merge: headers + payload within GSO_MAX_FRAME - 64 */

typedef struct {
    int on;
    size_t row_len, reflen;
    const uint8_t *ref, *keep, *kf, *kl;
    size_t offs[MAX_L];
    int noffs;
    rx_layout L;
    int verify, kind; /* kind: 0 plain, 1 hint, 2 fold */
    uint8_t meta[4];  /* fold: (flags, l2, l3, tun) of the carried level, its headers at ref[coff:cend] */
    size_t coff, cend;
    int same_layout;  /* the other entry's frame info has the same G and layout (rxpipe.merge may join them) */
    size_t max_datagram; /* RxDriver.max_datagram */
} rxd_flow;

#define RXD_FLOWS 2 /* Receiver.last and Receiver.prev */

typedef struct {
    int held, peer, extendable, reads, fi; /* fi: the flow (index into the flows) the run's reads matched */
    uint8_t hdr[1024], ref[RXD_MAX_REF];
    uint8_t *pay;
    size_t paylen, paycap, mss, segments;
    uint32_t seq0, next_seq;
    unsigned first_ids[MAX_L], last_ids[MAX_L];
} rxd_run;

/* flow: (row_len, ref, keep, csum_offs, G, H, ip4 ((off, innermost), ...), ip6, udp ((off, has, ip, v6),) or (),
 *        tcp_ip, tcp_ip_v6, tcp, keep_full, keep_last, verify, kind, fold meta (4 bytes) or b"", coff, cend,
 *        same_layout, max_datagram)
 * -- rxnative.Receiver.last as udpnest.rxbatch packs it; everything checked here, once per call (a flow that
 * does not fit is off: its reads go to Python). */
static int rxd_parse(PyObject *t, rxd_flow *F)
{
    Py_ssize_t row_len, G, H, tcp_ip, tcp, reflen, keeplen, kflen, kllen, metalen, coff, cend, maxdg;
    PyObject *offs, *ip4, *ip6, *udp;
    const char *ref, *keep, *kf, *kl, *meta;
    int v6, verify, kind, same_layout;
    memset(F, 0, sizeof(*F));
    if (t == Py_None)
        return 0;
    if (!PyArg_ParseTuple(t, "ny#y#O!nnO!O!O!npny#y#piy#nnpn;rx_batch: flow", &row_len, &ref, &reflen, &keep,
                          &keeplen, &PyTuple_Type, &offs, &G, &H, &PyTuple_Type, &ip4, &PyTuple_Type, &ip6,
                          &PyTuple_Type, &udp, &tcp_ip, &v6, &tcp, &kf, &kflen, &kl, &kllen, &verify, &kind, &meta,
                          &metalen, &coff, &cend, &same_layout, &maxdg))
        return -1;
    rx_layout *L = &F->L;
    int ok = G >= 0 && H > 0 && H <= 1024 && G + H == reflen && reflen <= RXD_MAX_REF && keeplen >= reflen &&
             kflen >= reflen && kllen >= reflen && row_len > reflen && kind >= 0 && kind <= 2 &&
             PyTuple_GET_SIZE(offs) <= MAX_L && PyTuple_GET_SIZE(ip4) <= MAX_L && PyTuple_GET_SIZE(ip6) <= MAX_L &&
             PyTuple_GET_SIZE(udp) <= 1 && tcp_ip >= 0 && tcp >= 0 && (size_t)tcp + 20 <= (size_t)H &&
             (size_t)tcp_ip + (v6 ? 40 : 20) <= (size_t)H && tcp_ip < tcp && (metalen == 0 || metalen == 4);
    if (!ok)
        goto bad;
    L->G = (size_t)G;
    L->H = (size_t)H;
    L->tcp_ip = (size_t)tcp_ip;
    L->tcp_ip_v6 = v6;
    L->tcp = (size_t)tcp;
    F->noffs = (int)PyTuple_GET_SIZE(offs);
    for (int i = 0; i < F->noffs; i++) {
        Py_ssize_t o = PyLong_AsSsize_t(PyTuple_GET_ITEM(offs, i));
        if (o < 0 || o + 2 > reflen)
            goto bad;
        F->offs[i] = (size_t)o;
    }
    L->n4 = (int)PyTuple_GET_SIZE(ip4);
    for (int i = 0; i < L->n4; i++) {
        Py_ssize_t off;
        int inner;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(ip4, i), "np", &off, &inner))
            return -1;
        if (off < 0 || (size_t)off + 20 > (size_t)H)
            goto bad;
        L->ip4[i] = (size_t)off;
        L->inner4[i] = inner;
    }
    L->n6 = (int)PyTuple_GET_SIZE(ip6);
    for (int i = 0; i < L->n6; i++) {
        Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(ip6, i));
        if (off < 0 || (size_t)off + 40 > (size_t)H)
            goto bad;
        L->ip6[i] = (size_t)off;
    }
    L->nu = (int)PyTuple_GET_SIZE(udp);
    for (int i = 0; i < L->nu; i++) {
        Py_ssize_t off, ipo;
        int has, uv6;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(udp, i), "npnp", &off, &has, &ipo, &uv6))
            return -1;
        if (off < 0 || ipo < 0 || (size_t)off + 8 > (size_t)H || off >= tcp || (size_t)ipo + (uv6 ? 40 : 20) > (size_t)H)
            goto bad;
        L->udp[i] = (size_t)off;
        L->udp_has[i] = has;
        L->udp_ip[i] = (size_t)ipo;
        L->udp_v6[i] = uv6;
    }
    if (metalen == 4) { /* the carried level rx_super restores: as rx_super_build checks it */
        const uint8_t *m = (const uint8_t *)meta;
        size_t n = (size_t)(cend - coff);
        if (coff < 0 || cend < coff || cend > G || n > UN_MAX_FOLD_HDRS || (size_t)m[1] + m[2] + 8 + m[3] != n ||
            m[2] < (m[0] & 0x80 ? 40u : 20u))
            goto bad;
        memcpy(F->meta, m, 4);
        F->coff = (size_t)coff;
        F->cend = (size_t)cend;
    } else if (kind == 2)
        goto bad;
    F->row_len = (size_t)row_len;
    F->reflen = (size_t)reflen;
    F->ref = (const uint8_t *)ref;
    F->keep = (const uint8_t *)keep;
    F->kf = (const uint8_t *)kf;
    F->kl = (const uint8_t *)kl;
    F->verify = verify;
    F->kind = kind;
    F->same_layout = same_layout;
    F->max_datagram = maxdg > 0 ? (size_t)maxdg : 0;
    F->on = 1;
    return 0;
bad: /* a layout the checks here do not cover: C leaves that flow's reads to Python */
    memset(F, 0, sizeof(*F));
    return 0;
}

/* rxnative.finish + Endpoint._tap_write for the held run (reads_per_super_packet counted first, as
 * RxDriver._finish); the run is no longer held after it */
static void rxd_finish(rxb_state *S, const rxd_flow *flows, rxd_run *R, int tap_fd)
{
    const rxd_flow *F = &flows[R->fi];
    const rx_layout *L = &F->L;
    R->held = 0;
    S->rps[R->reads < 3 ? R->reads : 3]++;
    uint8_t h[1024], nested[UN_MAX_FOLD_HDRS], vnet[24], fold[4 + UN_MAX_FOLD_HDRS];
    size_t shift = 0, flen = 0;
    if (F->kind == 2) {
        memcpy(fold, F->meta, 4);
        memcpy(fold + 4, R->ref + F->coff, F->cend - F->coff);
        flen = 4 + F->cend - F->coff;
    }
    const char *why = NULL;
    int r = rx_super_build(R->hdr, L->H, R->paylen, R->mss, L->ip4, L->n4, L->ip6, L->n6, L->nu, L->udp[0],
                           L->udp_has[0], L->udp_ip[0], L->udp_v6[0], L->tcp_ip, L->tcp_ip_v6, L->tcp,
                           F->kind == 2 ? fold : NULL, flen, h, nested, &shift, vnet, &why);
    if (r <= 0) { /* 0: a length over 65535 (the reference's fold_too_large); < 0 never: rxd_parse / rxd_read checked */
        S->drops[UN_R_FOLD_TOO_LARGE] += (Py_ssize_t)R->segments;
        return;
    }
    struct iovec iov[4];
    int niov = 0;
    iov[niov].iov_base = vnet;
    iov[niov++].iov_len = 24;
    if (shift) {
        iov[niov].iov_base = nested;
        iov[niov++].iov_len = shift;
    }
    iov[niov].iov_base = h;
    iov[niov++].iov_len = L->H;
    iov[niov].iov_base = R->pay;
    iov[niov++].iov_len = R->paylen;
    ssize_t w = rxb_writev(tap_fd, iov, niov);
    if (w < 0) {
        S->dtap_drop += (Py_ssize_t)R->segments;
        S->tap_errno = errno;
        return;
    }
    S->dtap_bytes += w - 24;
    if (S->ndseg < RXB_MAX_WRITES)
        S->dseg[S->ndseg++] = (Py_ssize_t)R->segments * 4 + F->kind; /* segments and kind of each write */
    const uint8_t *first = shift ? nested : h;
    size_t first_len = shift ? shift : L->H;
    if (first_len >= 12)
        rxb_learn(S, R->peer, first + 6);
}

/* One read of n bytes (UDP_GRO size gso < n) from peer: 1 when handled in C (coalesced, then held, merged with
 * the held run, or finished), 0 when the Python path must take it (nothing has been touched then: the held run
 * is handed back with it).  Exactly rxnative.Receiver._coalesce (a hit on Receiver.last), RxDriver.read and
 * rxpipe.merge for a read that coalesces whole. */
/* Receiver._info's cache test (rx_same on the keep mask and the nested UDP checksum offsets) */
static int rxd_hit(const rxd_flow *F, const uint8_t *buf, size_t gso)
{
    if (!F->on || gso != F->row_len)
        return 0;
    if (un_masked_differs(buf, F->ref, F->keep, F->reflen))
        return 0;
    for (int i = 0; i < F->noffs; i++) {
        size_t o = F->offs[i];
        if (((buf[o] | buf[o + 1]) != 0) != ((F->ref[o] | F->ref[o + 1]) != 0))
            return 0;
    }
    return 1;
}

static int rxd_read(rxb_state *S, const rxd_flow *flows, rxd_run *R, const uint8_t *buf, size_t n, size_t gso,
                    int peer, int tap_fd)
{
    if (gso == 0 || n <= gso)
        return 0;
    int fi = 0; /* Receiver._info tries last, then prev (swapping them: its cache, not its result) */
    while (fi < RXD_FLOWS && !rxd_hit(&flows[fi], buf, gso))
        fi++;
    if (fi == RXD_FLOWS || (R->held && R->fi != fi)) /* (a run of the other entry's flow: Python decides) */
        return 0;
    const rxd_flow *F = &flows[fi];
    const rx_layout *L = &F->L;
    const size_t G = L->G, H = L->H, GH = G + H;
    size_t count = (n + gso - 1) / gso, row_len = gso, last_len = n - (count - 1) * gso;
    /* rxpipe.too_short; rx_coalesce's bounds (the first row's IPv4 header lengths) */
    if (row_len <= GH || last_len < GH || (last_len == GH && count > 1))
        return 0;
    for (int i = 0; i < L->n4; i++)
        if (L->ip4[i] + (size_t)(buf[G + L->ip4[i]] & 0xF) * 4 > H)
            return 0;
    if (rx_check(buf, count, row_len, last_len, L, F->kf, F->kl, F->verify, 0) != UN_O_OK)
        return 0;
    const uint8_t *last = buf + (count - 1) * row_len;
    const size_t t = G + L->tcp;
    unsigned last_flags = last[t + 13];
    uint32_t seq0 = un_get32(buf + t + 4);
    size_t mss = row_len - GH, lastp = last_len - GH, total = (count - 1) * mss + lastp;
    int ext = lastp == mss && !(last_flags & (0x08 | 0x01));
    unsigned fids[MAX_L], lids[MAX_L];
    for (int k = 0; k < L->n4; k++) {
        fids[k] = un_get16(buf + G + L->ip4[k] + 4);
        lids[k] = un_get16(last + G + L->ip4[k] + 4);
    }
    S->coalesced++;
    if (R->held) { /* rxpipe.merge(held, this read) */
        int ok = R->peer == peer && R->extendable && seq0 == R->next_seq && mss == R->mss &&
                 H + R->paylen + total <= RXD_MAX_SUPER;
        for (size_t j = 0; ok && j < GH; j++)
            if (F->kf[j] && buf[j] != R->ref[j])
                ok = 0;
        for (int k = 0; ok && k < L->n4; k++) {
            size_t off = L->ip4[k];
            int df = (R->ref[G + off + 6] & 0x40) != 0;
            int fixed = (df || !L->inner4[k]) && R->last_ids[k] == fids[k];
            if (!fixed && fids[k] != ((R->last_ids[k] + 1) & 0xFFFF))
                ok = 0;
        }
        if (ok && R->paylen + total <= R->paycap) {
            S->merged++;
            uint8_t *dst = R->pay + R->paylen;
            for (size_t i = 0; i + 1 < count; i++, dst += mss)
                memcpy(dst, buf + i * row_len + GH, mss);
            memcpy(dst, last + GH, lastp);
            R->paylen += total;
            R->hdr[L->tcp + 13] = (uint8_t)last_flags;
            R->segments += count;
            R->next_seq = seq0 + (uint32_t)total;
            memcpy(R->last_ids, lids, sizeof(lids));
            R->extendable = ext;
            R->reads++;
            if (!ext)
                rxd_finish(S, flows, R, tap_fd);
            return 1;
        }
        rxd_finish(S, flows, R, tap_fd);
    }
    /* a new run: Receiver._coalesce's Run, held when extendable (RxDriver.read) */
    uint8_t *dst = R->pay;
    for (size_t i = 0; i + 1 < count; i++, dst += mss)
        memcpy(dst, buf + i * row_len + GH, mss);
    memcpy(dst, last + GH, lastp);
    memcpy(R->ref, buf, GH);
    memcpy(R->hdr, buf + G, H);
    R->hdr[L->tcp + 13] = (uint8_t)last_flags;
    R->paylen = total;
    R->mss = mss;
    R->segments = count;
    R->seq0 = seq0;
    R->next_seq = seq0 + (uint32_t)total;
    memcpy(R->first_ids, fids, sizeof(fids));
    memcpy(R->last_ids, lids, sizeof(lids));
    R->extendable = ext;
    R->reads = 1;
    R->peer = peer;
    R->fi = fi;
    R->held = 1;
    if (!ext)
        rxd_finish(S, flows, R, tap_fd);
    return 1;
}

/* A one-datagram read of n bytes from the held run's peer: 1 when it continues the held run in C (rxpipe.single_run
 * on a hit of the cache entry of its length, then rxpipe.merge: a full segment continues the run, a shorter one
 * ends it), 0 when the Python path must take it (nothing touched: a read that is no candidate, has no cache
 * entry, does not single_run, or does not merge; Python then finishes the run and holds or writes the datagram). */
static int rxd_tail(rxb_state *S, const rxd_flow *flows, rxd_run *R, const uint8_t *buf, size_t n, int peer,
                    size_t single_min, int tap_fd)
{
    if (!R->held || R->peer != peer)
        return 0;
    const rxd_flow *FA = &flows[R->fi];
    const rx_layout *L = &FA->L;
    const size_t G = L->G, H = L->H, GH = G + H;
    /* RxDriver._single_candidate with a held run of this peer */
    if (n > FA->max_datagram || !(n >= single_min || (GH < n && n <= GH + R->mss)))
        return 0;
    int fi = 0; /* Receiver._info for a row of n bytes */
    while (fi < RXD_FLOWS && !rxd_hit(&flows[fi], buf, n))
        fi++;
    if (fi == RXD_FLOWS || (fi != R->fi && (!flows[fi].same_layout || !FA->same_layout)))
        return 0;
    const rxd_flow *FB = &flows[fi];
    if (n <= GH) /* single_run: no payload */
        return 0;
    for (int i = 0; i < L->n4; i++) /* rx_coalesce's bounds */
        if (L->ip4[i] + (size_t)(buf[G + L->ip4[i]] & 0xF) * 4 > H)
            return 0;
    if (rx_check(buf, 1, n, n, &FB->L, FB->kf, FB->kl, FB->verify, 1) != UN_O_OK)
        return 0;
    const size_t t = G + L->tcp;
    unsigned flags = buf[t + 13];
    uint32_t seq0 = un_get32(buf + t + 4);
    size_t mss = n - GH;
    int short_ = mss != R->mss;
    /* rxpipe.merge(held, the 1-segment run) */
    if (seq0 != R->next_seq || (short_ && !(mss < R->mss)) || H + R->paylen + mss > RXD_MAX_SUPER ||
        R->paylen + mss > R->paycap)
        return 0;
    const uint8_t *keep = short_ ? FA->kl : FA->kf;
    if (un_masked_differs(buf, R->ref, keep, GH))
        return 0;
    unsigned ids[MAX_L];
    for (int k = 0; k < L->n4; k++) {
        size_t off = L->ip4[k];
        ids[k] = un_get16(buf + G + off + 4);
        int df = (R->ref[G + off + 6] & 0x40) != 0;
        int fixed = (df || !L->inner4[k]) && R->last_ids[k] == ids[k];
        if (!fixed && ids[k] != ((R->last_ids[k] + 1) & 0xFFFF))
            return 0;
    }
    S->merged++;
    S->single_merged++;
    memcpy(R->pay + R->paylen, buf + GH, mss);
    R->paylen += mss;
    R->hdr[L->tcp + 13] = (uint8_t)flags;
    R->segments += 1;
    R->next_seq = seq0 + (uint32_t)mss;
    memcpy(R->last_ids, ids, sizeof(ids));
    R->extendable = !(flags & (0x08 | 0x01)) && !short_;
    R->reads++;
    if (!R->extendable)
        rxd_finish(S, flows, R, tap_fd);
    return 1;
}

#define RXB_MAX_LINGER_NS 60000000000LL /* a linger window of at most 60 s */
#define RXB_STOP_SLICE_NS 10000000LL     /* the stop flag is looked at every 10 ms of a linger wait at least */

static long long rxb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* --- RX queues (udpnest.io.udp.RxQueues): N SO_REUSEPORT sockets, served round robin --- */

#define RXQ_MAX 64

/* sched: [quantum, current index, reads on it since the last switch, fds[n], SO_RXQ_OVFL per socket, reads[n]] */
typedef struct {
    int64_t *q;
    int n;
} rxq_t;

static void rxq_fill(const rxq_t *Q, struct pollfd *p, short events)
{
    for (int i = 0; i < Q->n; i++) {
        p[i].fd = (int)Q->q[3 + i];
        p[i].events = events;
        p[i].revents = 0;
    }
}

/* after a poll: the next socket after the current one (the current one last) that reported anything becomes
 * current (its read count 0); its index, or -1 when none did */
static int rxq_next(rxq_t *Q, const struct pollfd *p)
{
    int j = un_next_ready(un_poll_ready(p, Q->n), (int)Q->q[1], Q->n);
    if (j >= 0) {
        Q->q[1] = j;
        Q->q[2] = 0;
    }
    return j;
}

/* one poll of all the sockets (timeout ms, -1: block): a ready socket became current: 1 when it has data, 2 when
 * it reports something else too (a shutdown, an error: its next recvmsg blocks, and so returns at once what
 * today's blocking recvmsg would); 0 none is ready, -1 a poll error (errno) */
static int rxq_pick(rxq_t *Q, int timeout)
{
    struct pollfd p[RXQ_MAX];
    rxq_fill(Q, p, POLLIN | POLLRDHUP);
    int r = poll(p, (nfds_t)Q->n, timeout);
    if (r < 0)
        return -1;
    int j = r > 0 ? rxq_next(Q, p) : -1;
    return j < 0 ? 0 : p[j].revents == POLLIN ? 1 : 2;
}

/* The linger wait (GIL released): 1 when fd (with Q: any of the queues' sockets, which becomes current) became
 * readable within the window, 0 when the window ended, the stop flag is set or the socket reports anything but
 * data (a shutdown, an error: the caller's next blocking recvmsg sees it as today), -1 on a poll error (errno;
 * EINTR included: the caller returns so signals are handled).
 * Nothing wakes a poll when the stop flag is set, so it waits in slices of at most RXB_STOP_SLICE_NS. */
static int rxb_linger(int fd, rxq_t *Q, long long deadline, const uint8_t *stopb)
{
    struct pollfd p[RXQ_MAX];
    for (;;) {
        if (stopb && stopb[0])
            return 0;
        long long left = deadline - rxb_now();
        if (left <= 0)
            return 0;
        if (left > RXB_STOP_SLICE_NS)
            left = RXB_STOP_SLICE_NS;
        int np = 1;
        if (Q != NULL) {
            rxq_fill(Q, p, POLLIN | POLLRDHUP);
            np = Q->n;
        } else {
            p[0].fd = fd;
            p[0].events = POLLIN | POLLRDHUP;
            p[0].revents = 0;
        }
        struct timespec ts = {.tv_sec = (time_t)(left / 1000000000LL), .tv_nsec = (long)(left % 1000000000LL)};
        int r = ppoll(p, (nfds_t)np, &ts, NULL);
        if (r < 0)
            return -1;
        if (r == 0)
            continue;
        if (stopb && stopb[0])
            return 0;
        if (Q == NULL)
            return p[0].revents == POLLIN ? 1 : 0;
        int j = rxq_next(Q, p);
        return j >= 0 && p[j].revents == POLLIN ? 1 : 0;
    }
}

static PyObject *native_rx_batch(PyObject *self, PyObject *args)
{
    int fd, tap_fd, width;
    Py_buffer b, pb, vb, sb = {0};
    long vni, opt_class;
    PyObject *folds, *stop = Py_None, *flow = NULL, *queues = Py_None;
    Py_ssize_t single_min, max_count;
    long long linger_ns = 0;
    Py_buffer qb = {0};
    if (!PyArg_ParseTuple(args, "iiw*y*illO!nny*|OOLO", &fd, &tap_fd, &b, &pb, &width, &vni, &opt_class,
                          &PyList_Type, &folds, &single_min, &max_count, &vb, &stop, &flow, &linger_ns, &queues))
        return NULL;
    PyObject *result = NULL, *tpls = NULL;
    rxb_state *S = NULL;
    rxd_run *R = NULL;
    rxd_flow F[RXD_FLOWS];
    memset(F, 0, sizeof(F));
    int have_stop = 0, have_q = 0;
    rxq_t Q = {NULL, 0}, *QP = NULL; /* QP: the RX queues when there are several sockets (else fd, as ever) */
    if (stop != Py_None) {
        if (PyObject_GetBuffer(stop, &sb, PyBUF_SIMPLE) < 0)
            goto out;
        have_stop = 1;
    }
    if (queues != Py_None) { /* RxQueues.sched (an array('q')): checked once here */
        if (PyObject_GetBuffer(queues, &qb, PyBUF_WRITABLE) < 0)
            goto out;
        have_q = 1;
        Py_ssize_t m = qb.len / 8;
        int ok = qb.len % 8 == 0 && m >= 6 && (m - 3) % 3 == 0 && (m - 3) / 3 <= RXQ_MAX && qb.itemsize == 8;
        if (ok) {
            Q.q = qb.buf;
            Q.n = (int)((m - 3) / 3);
            ok = Q.q[0] >= 1 && Q.q[1] >= 0 && Q.q[1] < Q.n && Q.q[2] >= 0;
            for (int k = 0; ok && k < Q.n; k++)
                ok = Q.q[3 + k] >= 0 && Q.q[3 + k] <= INT32_MAX;
        }
        if (!ok) {
            PyErr_SetString(PyExc_ValueError, "rx_batch: queues must be RxQueues.sched (array('q'))");
            goto out;
        }
        if (Q.n > 1)
            QP = &Q;
    }
    if ((width != 4 && width != 16) || pb.len % width || pb.len / width > RXB_MAX_PEERS || max_count < 1 ||
        max_count > RXB_MAX_COUNT || b.len < 1 || single_min < 0 || (have_stop && sb.len < 1) || linger_ns < 0 ||
        linger_ns > RXB_MAX_LINGER_NS) {
        PyErr_SetString(PyExc_ValueError, "rx_batch: bad arguments (peer width, counts or buffers)");
        goto out;
    }
    /* the FOLD templates (bytes, newest first) as plain pointers: the tuple keeps them alive */
    tpls = PyList_AsTuple(folds);
    if (tpls == NULL)
        goto out;
    rxb_tpl tpl[RXB_MAX_TEMPLATES];
    int ntpl = 0;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(tpls) && ntpl < RXB_MAX_TEMPLATES; k++) {
        PyObject *t = PyTuple_GET_ITEM(tpls, k);
        if (!PyBytes_Check(t))
            continue;
        tpl[ntpl].p = (const uint8_t *)PyBytes_AS_STRING(t);
        tpl[ntpl].len = (size_t)PyBytes_GET_SIZE(t);
        ntpl++;
    }
    S = PyMem_Calloc(1, sizeof(*S));
    if (S == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    S->socket_drops = -1;
    uint8_t *buf = b.buf;
    size_t cap = (size_t)b.len;
    if (flow != NULL && flow != Py_None) { /* flows: (Receiver.last's, Receiver.prev's), each a flow or None */
        if (!PyTuple_Check(flow) || PyTuple_GET_SIZE(flow) > RXD_FLOWS) {
            PyErr_SetString(PyExc_ValueError, "rx_batch: flows must be a tuple of at most 2");
            goto out;
        }
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(flow); k++)
            if (rxd_parse(PyTuple_GET_ITEM(flow, k), &F[k]) < 0)
                goto out;
    }
    if (F[0].on || F[1].on) {
        R = PyMem_Calloc(1, sizeof(*R));
        if (R != NULL) {
            R->paycap = cap > 65536 ? cap : 65536; /* a read's payload (< cap), or a merged run's (<= RXD_MAX_SUPER) */
            R->pay = PyMem_Malloc(R->paycap);
        }
        if (R == NULL || R->pay == NULL) {
            PyErr_NoMemory();
            goto out;
        }
    }
    int empty = 0;
    const uint8_t *peers = pb.buf, *stopb = have_stop ? sb.buf : NULL;
    size_t npeers = (size_t)pb.len / (size_t)width;
    int err = 0, back = 0;
    ssize_t back_n = 0;
    long back_gso = 0;
    struct sockaddr_storage sa;
    socklen_t back_salen = 0;
    long long deadline = 0; /* CLOCK_MONOTONIC ns: the linger window's end (set at the first datagram) */
    int qpick = 1; /* RX queues: the last pick's outcome for the current socket (2: its next recvmsg blocks) */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < max_count;) {
        union {
            struct cmsghdr align;
            uint8_t b[256];
        } ctl;
        struct iovec iov = {buf, cap};
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_name = &sa;
        msg.msg_namelen = sizeof(sa);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.b;
        msg.msg_controllen = sizeof(ctl.b);
        ssize_t n;
        int e = 0;
        if (QP == NULL) {
            n = recvmsg(fd, &msg, i ? MSG_DONTWAIT : 0);
            e = n < 0 ? errno : 0;
        } else { /* RxQueues' rule: after quantum reads (no run held) one poll picks the next ready socket */
            int pr = qpick;
            qpick = 1;
            if (Q.q[2] >= Q.q[0] && !(R != NULL && R->held))
                pr = rxq_pick(QP, i ? 0 : -1);
            if (pr < 0) {
                err = errno;
                break;
            }
            if (pr > 0) {
                n = recvmsg((int)Q.q[3 + Q.q[1]], &msg, pr == 1 ? MSG_DONTWAIT : 0);
                e = n < 0 ? errno : 0;
            } else {
                n = -1;
                e = EAGAIN;
            }
        }
        if (n < 0) {
            if (e != EAGAIN && e != EWOULDBLOCK) { /* empty: None, as recv_into's BlockingIOError */
                err = e;
                break;
            }
            if (QP != NULL) { /* the current socket is empty: the others (its held run is complete first) */
                Q.q[2] = Q.q[0];
                if (i == 0) { /* the call's first datagram: wait on all the sockets (today's blocking recvmsg) */
                    qpick = rxq_pick(QP, -1);
                    if (qpick < 0) {
                        err = errno;
                        break;
                    }
                    continue;
                }
                if (R != NULL && R->held)
                    rxd_finish(S, F, R, tap_fd);
                qpick = rxq_pick(QP, 0);
                if (qpick < 0) {
                    err = errno;
                    break;
                }
                if (qpick > 0)
                    continue;
                qpick = 1;
            }
            empty = 1;
            if (linger_ns == 0 || i == 0)
                break;
            /* linger: the socket is empty; the held run goes out now, exactly as at a return (RxDriver.flush),
             * then wait for the socket until the window ends, with nothing held */
            if (R != NULL && R->held)
                rxd_finish(S, F, R, tap_fd);
            int w = rxb_linger(fd, QP, deadline, stopb);
            if (w < 0)
                err = errno;
            if (w <= 0)
                break;
            empty = 0;
            continue; /* readable: the next recvmsg (MSG_DONTWAIT) */
        }
        if (QP != NULL) {
            Q.q[2]++;
            Q.q[3 + 2 * Q.n + Q.q[1]]++;
        }
        if (i++ == 0 && linger_ns > 0)
            deadline = rxb_now() + linger_ns;
        long gso = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
            size_t dl = c->cmsg_len >= CMSG_LEN(0) ? c->cmsg_len - CMSG_LEN(0) : 0;
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == RXB_UDP_GRO && (dl == 2 || dl == 4)) {
                if (dl == 2) {
                    uint16_t v;
                    memcpy(&v, CMSG_DATA(c), 2);
                    gso = v;
                } else {
                    int v;
                    memcpy(&v, CMSG_DATA(c), 4);
                    gso = v;
                }
            } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == RXB_SO_RXQ_OVFL && dl >= 4) {
                uint32_t v;
                memcpy(&v, CMSG_DATA(c), 4);
                if (QP != NULL) /* per socket (RxQueues.socket_drops sums them) */
                    Q.q[3 + Q.n + Q.q[1]] = v;
                else
                    S->socket_drops = v;
            }
        }
        int trunc = (msg.msg_flags & MSG_TRUNC) != 0;
        if (trunc)
            S->truncated++;
        int peer = -1;
        int ok = n > 0 && !trunc && (size_t)n <= cap && !(stopb && stopb[0]);
        int held = R != NULL && R->held, one = gso <= 0 || gso >= n;
        int small = ok && one && n < single_min && !held;
        int tail = ok && one && held; /* a one-datagram read while holding: it may continue or end the run */
        int data = ok && R != NULL && !one;
        if ((small || tail || data) && (peer = rxb_peer(&sa, msg.msg_namelen, peers, npeers, width)) >= 0 &&
            (small  ? rxb_one(S, buf, (size_t)n, peer, vni, opt_class, tpl, ntpl, tap_fd, vb.buf, (size_t)vb.len)
             : tail ? rxd_tail(S, F, R, buf, (size_t)n, peer, (size_t)single_min, tap_fd)
                    : rxd_read(S, F, R, buf, (size_t)n, (size_t)gso, peer, tap_fd))) {
            S->reads++;
            S->bytes += n;
            S->handled++;
            /* a window that ends while datagrams keep coming: return between runs (counters and learned MACs
             * at most one window late, the stop flag checked per datagram as ever) */
            if (linger_ns > 0 && !(R != NULL && R->held) && rxb_now() >= deadline)
                break;
            continue;
        }
        back = 1; /* (a deferred row: rxb_one wrote nothing and counted nothing) */
        back_n = n;
        back_gso = gso;
        back_salen = msg.msg_namelen;
        break;
    }
    if (empty && R != NULL && R->held) /* nothing more waiting: the held run goes out (RxDriver.flush) */
        rxd_finish(S, F, R, tap_fd);
    Py_END_ALLOW_THREADS
    PyObject *item, *drops, *learned;
    if (back)
        item = Py_BuildValue("(nly#)", (Py_ssize_t)back_n, back_gso, (const char *)&sa,
                             (Py_ssize_t)(back_salen <= sizeof(sa) ? back_salen : sizeof(sa)));
    else
        item = Py_NewRef(Py_None);
    int nd = 0;
    for (int r = 0; r < RXB_REASONS; r++)
        nd += S->drops[r] != 0;
    drops = PyTuple_New(nd);
    for (int r = 0, k = 0; drops != NULL && r < RXB_REASONS; r++)
        if (S->drops[r])
            PyTuple_SET_ITEM(drops, k++, Py_BuildValue("(in)", r, S->drops[r]));
    learned = PyTuple_New(S->nlearn);
    for (int k = 0; learned != NULL && k < S->nlearn; k++)
        PyTuple_SET_ITEM(learned, k, Py_BuildValue("(iy#)", S->learn_peer[k], (const char *)S->learn_mac[k],
                                                   (Py_ssize_t)6));
    PyObject *dsegs = NULL, *held = NULL;
    if (flow != NULL) {
        dsegs = PyTuple_New(S->ndseg);
        for (int k = 0; dsegs != NULL && k < S->ndseg; k++)
            PyTuple_SET_ITEM(dsegs, k, PyLong_FromSsize_t(S->dseg[k]));
        if (R != NULL && R->held) { /* handed back: RxDriver.pending's run, built by udpnest.rxbatch */
            const rx_layout *L = &F[R->fi].L;
            PyObject *fi = PyTuple_New(L->n4), *li = PyTuple_New(L->n4);
            for (int k = 0; fi != NULL && li != NULL && k < L->n4; k++) {
                PyTuple_SET_ITEM(fi, k, PyLong_FromLong((long)R->first_ids[k]));
                PyTuple_SET_ITEM(li, k, PyLong_FromLong((long)R->last_ids[k]));
            }
            if (fi != NULL && li != NULL && !PyErr_Occurred())
                held = Py_BuildValue("(y#y#y#nnnkkNNiiii)", (const char *)R->pay, (Py_ssize_t)R->paylen,
                                     (const char *)R->hdr, (Py_ssize_t)L->H, (const char *)R->ref,
                                     (Py_ssize_t)(L->G + L->H), (Py_ssize_t)R->paylen, (Py_ssize_t)R->mss,
                                     (Py_ssize_t)R->segments, (unsigned long)R->seq0, (unsigned long)R->next_seq, fi,
                                     li, R->extendable, R->reads, R->peer, R->fi);
            else {
                Py_XDECREF(fi);
                Py_XDECREF(li);
            }
        } else
            held = Py_NewRef(Py_None);
    }
    if (item != NULL && drops != NULL && learned != NULL && !PyErr_Occurred() && flow == NULL)
        result = Py_BuildValue("(N(nnnnnnninLn)NNi)", item, S->reads, S->bytes, S->plain, S->hint, S->fold,
                               S->tap_bytes, S->tap_errors, S->tap_errno, S->truncated, S->socket_drops,
                               S->handled, drops, learned, err);
    else if (item != NULL && drops != NULL && learned != NULL && dsegs != NULL && held != NULL && !PyErr_Occurred())
        result = Py_BuildValue("(N(nnnnnnninLn)NNi(nnnnnnnNn)N)", item, S->reads, S->bytes, S->plain, S->hint,
                               S->fold, S->tap_bytes, S->tap_errors, S->tap_errno, S->truncated, S->socket_drops,
                               S->handled, drops, learned, err, S->coalesced, S->merged, S->rps[1], S->rps[2],
                               S->rps[3], S->dtap_bytes, S->dtap_drop, dsegs, S->single_merged, held);
    else {
        Py_XDECREF(item);
        Py_XDECREF(drops);
        Py_XDECREF(learned);
        Py_XDECREF(dsegs);
        Py_XDECREF(held);
    }
out:
    if (R != NULL)
        PyMem_Free(R->pay);
    PyMem_Free(R);
    PyMem_Free(S);
    Py_XDECREF(tpls);
    if (have_stop)
        PyBuffer_Release(&sb);
    if (have_q)
        PyBuffer_Release(&qb);
    PyBuffer_Release(&b);
    PyBuffer_Release(&pb);
    PyBuffer_Release(&vb);
    return result;
}

static PyMethodDef rxbatch_methods[] = {
    {"rx_batch", native_rx_batch, METH_VARARGS,
     "rx_batch(fd, tap_fd, buf, peers, width, vni, opt_class, folds, single_min, max_count, vnet, stop=None, "
     "flows=None, linger_ns=0, queues=None) -> "
     "(item, counts, drops, learned, errno): small one-datagram reads from peers received and written to the "
     "TAP in C; item: the first datagram not handled, left in buf as (nbytes, gso_size, sockaddr) or None"},
    {NULL, NULL, 0, NULL},
};

int udpnest_rxbatch_init(PyObject *module)
{
    if (PyModule_AddFunctions(module, rxbatch_methods) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "RX_BATCH_MAX", RXB_MAX_COUNT);
}
