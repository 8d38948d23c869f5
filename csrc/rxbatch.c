/* RX fast path of the native core: runs of small one-datagram reads (TCP ACKs) without a Python round trip.
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
 *  Bounds: every length is checked before a read (rx_one and rx_restore do their own); the GIL is released
 *  for the whole receive/write loop (the FOLD templates are copied out first, the buffers are pinned).
 */
#include "udpnest.h"

#include <errno.h>
#include <netinet/in.h>
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

typedef struct {
    Py_ssize_t reads, bytes, plain, hint, fold, tap_bytes, tap_errors, handled, truncated;
    long long socket_drops;
    int tap_errno;
    Py_ssize_t drops[RXB_REASONS];
    int nlearn;
    int learn_peer[RXB_MAX_COUNT];
    uint8_t learn_mac[RXB_MAX_COUNT][6];
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
    if (S->nlearn >= RXB_MAX_COUNT)
        return; /* never: at most one entry per datagram */
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

static PyObject *native_rx_batch(PyObject *self, PyObject *args)
{
    int fd, tap_fd, width;
    Py_buffer b, pb, vb, sb = {0};
    long vni, opt_class;
    PyObject *folds, *stop = Py_None;
    Py_ssize_t single_min, max_count;
    if (!PyArg_ParseTuple(args, "iiw*y*illO!nny*|O", &fd, &tap_fd, &b, &pb, &width, &vni, &opt_class, &PyList_Type,
                          &folds, &single_min, &max_count, &vb, &stop))
        return NULL;
    PyObject *result = NULL, *tpls = NULL;
    rxb_state *S = NULL;
    int have_stop = 0;
    if (stop != Py_None) {
        if (PyObject_GetBuffer(stop, &sb, PyBUF_SIMPLE) < 0)
            goto out;
        have_stop = 1;
    }
    if ((width != 4 && width != 16) || pb.len % width || pb.len / width > RXB_MAX_PEERS || max_count < 1 ||
        max_count > RXB_MAX_COUNT || b.len < 1 || single_min < 0 || (have_stop && sb.len < 1)) {
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
    const uint8_t *peers = pb.buf, *stopb = have_stop ? sb.buf : NULL;
    size_t npeers = (size_t)pb.len / (size_t)width;
    int err = 0, back = 0;
    ssize_t back_n = 0;
    long back_gso = 0;
    struct sockaddr_storage sa;
    socklen_t back_salen = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < max_count; i++) {
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
        ssize_t n = recvmsg(fd, &msg, i ? MSG_DONTWAIT : 0);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) /* empty: None, as recv_into's BlockingIOError */
                err = errno;
            break;
        }
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
                S->socket_drops = v;
            }
        }
        int trunc = (msg.msg_flags & MSG_TRUNC) != 0;
        if (trunc)
            S->truncated++;
        int peer = -1;
        int ours = n > 0 && !trunc && (size_t)n <= cap && (gso <= 0 || gso >= n) && n < single_min &&
                   !(stopb && stopb[0]) &&
                   (peer = rxb_peer(&sa, msg.msg_namelen, peers, npeers, width)) >= 0;
        if (ours && rxb_one(S, buf, (size_t)n, peer, vni, opt_class, tpl, ntpl, tap_fd, vb.buf, (size_t)vb.len)) {
            S->reads++;
            S->bytes += n;
            S->handled++;
            continue;
        }
        back = 1; /* (a deferred row: rxb_one wrote nothing and counted nothing) */
        back_n = n;
        back_gso = gso;
        back_salen = msg.msg_namelen;
        break;
    }
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
    if (item != NULL && drops != NULL && learned != NULL && !PyErr_Occurred())
        result = Py_BuildValue("(N(nnnnnnninLn)NNi)", item, S->reads, S->bytes, S->plain, S->hint, S->fold,
                               S->tap_bytes, S->tap_errors, S->tap_errno, S->truncated, S->socket_drops,
                               S->handled, drops, learned, err);
    else {
        Py_XDECREF(item);
        Py_XDECREF(drops);
        Py_XDECREF(learned);
    }
out:
    PyMem_Free(S);
    Py_XDECREF(tpls);
    if (have_stop)
        PyBuffer_Release(&sb);
    PyBuffer_Release(&b);
    PyBuffer_Release(&pb);
    PyBuffer_Release(&vb);
    return result;
}

static PyMethodDef rxbatch_methods[] = {
    {"rx_batch", native_rx_batch, METH_VARARGS,
     "rx_batch(fd, tap_fd, buf, peers, width, vni, opt_class, folds, single_min, max_count, vnet, stop=None) -> "
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
