/* The native TX burst (docs/architecture.md, "The TX burst"): ONE call per TAP wakeup, or per linger window.
 *
 *   tx_burst(fd, buf, ep, snap, conf, linger_ns=0, stop=None, gen=None, quantum=4, rr=None) -> (rc, n, counts)
 *
 * fd is the TAP fd, or a tuple of a multi-queue TAP's queue fds (tap_queues; see "the queues" below).
 * reads frames from the non-blocking TAP fd into buf until the queue is empty (linger_ns > 0: and then
 * waits for more, see below), and for each frame whose
 * destination MAC is in the snapshot Python passes in (policy stays in Python: udpnest.txburst builds it
 * from the FDB and the prober) does the steady state of Endpoint._tx_frame + _send:
 *   vnet_check -> finish_csum (non-GSO NEEDS_CSUM) -> the build for the peer's mode (fold_one, the plain
 *   or hint prefix + frame, fold_gso, plain_gso: the C cores of csrc/tx.c (udpnest.h) the planner's Python
 *   entries wrap, called directly: the same bytes, no Python object per frame; the ports parsed once per call)
 *   -> single datagrams built into a C-owned batch (see "the C-owned batch" below; one batch with ep._batch)
 *   and flushed as Endpoint._flush_batch does (sendmmsg per socket, at 64, before a super-packet, at the end
 *   of the wakeup: the same batches, order and counters as the Python loop), super-packets cut into a C
 *   buffer and sent with sendmsg(UDP_SEGMENT) (GIL released around every syscall).
 *
 * It stops at the first frame it does not fully handle (a vnet or build rejection, a deferred build, a
 * group/unknown destination, an expired snapshot, USO, UFO, ...) and hands it back: rc 1, the frame is
 * buf[:n]; Python runs _tx_frame on it (the reference decides: drop reason, flooding, Python fold) and calls
 * again.  Nothing is counted or sent for a handed-back frame, so the counters equal the Python loop's.
 *
 *   snap = (macs {6-byte dst MAC: peer index}, peers ((sockaddr, mode 0 plain|1 hint|2 fold), ...),
 *           deadline (CLOCK_MONOTONIC seconds; 0: none), max_frames[, generation the snapshot was built under])
 *   conf = (vni, opt_class, ports, max_levels, max_datagram, plain prefix, tx sockets (UdpSocket, ...))
 *   rc:   0 the queue is empty (and the linger window over), 1 hand back buf[:n], 2 TAP read error (n = errno;
 *         also a failed poll), 3 EINTR, 4 max_frames done, 5 the generation word moved (rebuild the snapshot,
 *         call again), 6 the stop flag is set
 *   counts: (frames, bytes, datagrams, super_packets, sendmsg_calls, mode_plain, mode_hint, mode_fold,
 *            native_fast, send_errors, sendmmsg_calls, hist0..hist6, wait_ns, wakeups)
 *
 * The linger (one C call for many wakeups: the Python per wakeup, poll, clocks, snapshot check, counters,
 * is paid once per window): when the TAP is empty, the batch is flushed (a wakeup's end, as without linger:
 * no datagram waits in a userspace batch while C sleeps), then ppoll(fd) with the GIL released, in slices of
 * at most 10 ms, until linger_ns after the call's start (never past the snapshot's deadline); it returns
 * EMPTY when that window is over with the TAP empty (at once if the window is already over).  It returns
 * early when the stop flag byte is set (checked before every read and after every wait), when the
 * generation word (udpnest/generation.py, 8 bytes) differs from the snapshot's (before every read: rc 5,
 * the frame stays queued; after a read: that frame is handed back), at max_frames, for a hand-back.
 * wait_ns is the time spent in ppoll (the caller's busy time excludes it), wakeups the waits that ended
 * with the TAP readable.
 *
 * The queues (fd a tuple of N > 1 fds; docs/architecture.md, "A multi-queue TAP"): at most quantum (K)
 * frames are read from one queue; after K, or when that queue's read finds it empty, ONE poll(timeout 0)
 * over all N refreshes which are ready and the next ready queue after the current one is served (round
 * robin, the current one last).  None ready: the TAP is empty, as above (flush, then ppoll on ALL N fds;
 * their revents say which to serve next, without another poll(0)).  rr, a writable buffer of int32 (cur,
 * left), keeps the place across calls (a hand-back, max_frames, a generation change).  A single fd (an
 * int, or a tuple of one) is the single queue: the same read/ppoll calls as before.
 */
#include "udpnest.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define VNET 24
#define BATCH_FLUSH 64 /* endpoint._send: a socket's list is flushed at 64 datagrams */
#define UDP_MAX_SEGS 64 /* io/udp.py UDP_MAX_SEGMENTS */
#define NHIST 7

enum { C_FRAMES, C_BYTES, C_DGRAMS, C_SUPER, C_SENDMSG, C_PLAIN, C_HINT, C_FOLD, C_FAST, C_SENDERR, C_SENDMMSG,
       C_HIST, C_WAIT_NS = C_HIST + NHIST, C_WAKEUPS, C_N };
enum { RC_EMPTY, RC_HANDBACK, RC_READ_ERROR, RC_EINTR, RC_LIMIT, RC_STALE, RC_STOP };
/* a lingering call sleeps at most this long in one poll, then looks at the stop flag again */
#define LINGER_SLICE_NS 10000000LL

static long long mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* the generation word's value (generation.py: an array('q'), native byte order); read with the GIL held */
static long long gen_now(const Py_buffer *g)
{
    long long v;
    memcpy(&v, g->buf, sizeof v);
    return v;
}

/* the queues of a multi-queue TAP: at most TXQ_MAX; K (quantum) frames per queue turn unless told */
#define TXQ_MAX 64
#define TXQ_QUANTUM 4

/* a Python int as an fd (-1 with an exception set: not an int, or out of range) */
static int as_fd(PyObject *o)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "tx_burst: a TAP fd out of range");
        return -1;
    }
    return (int)v;
}

static PyObject *f_send_batch;
static PyObject *s_batch, *s_gso_disabled, *s_max_payload, *s_send_segments, *s_fileno, *s_sock, *s_send_parts;

/* ---- zlib.crc32 (IEEE 802.3, reflected 0xEDB88320): endpoint.flow_hash, tested equal to zlib's ---------- */

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t un_crc32(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* endpoint.flow_hash on an Ethernet frame of n bytes */
static uint32_t flow_hash(const uint8_t *f, size_t n)
{
    unsigned et = un_get16(f + 12);
    if (et == 0x0800 && n >= 38)
        return un_crc32(f + 26, 12);
    if (et == 0x86DD && n >= 58)
        return un_crc32(f + 22, 36);
    return 0;
}

static PyObject *tb_crc32(PyObject *self, PyObject *args)
{
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "y*", &b))
        return NULL;
    uint32_t c = un_crc32(b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(c);
}

static PyObject *tb_flow_hash(PyObject *self, PyObject *args)
{
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "y*", &b))
        return NULL;
    uint32_t c = b.len >= 14 ? flow_hash(b.buf, (size_t)b.len) : 0;
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(c);
}

static int bucket(long n)
{
    static const long edges[NHIST] = {1, 2, 4, 8, 16, 32, 64};
    for (int i = NHIST - 1; i >= 0; i--)
        if (n >= edges[i])
            return i;
    return 0;
}

static int addr_of(PyObject *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    if (un_sockaddr(addr, ss, len) < 0) {
        PyErr_Clear(); /* a malformed snapshot entry: hand the frame back */
        return -1;
    }
    return 0;
}

/* A full buffer's fallback (Endpoint._flush_batch): sock.send_parts([dg], addr), which waits.  1: sent (a
 * sendmsg); 0: an OSError (a send_error drop, cleared); -1: another Python error.  dg is a new reference
 * (stolen; NULL: the error of the call that made it). */
static int send_one(PyObject *sock, PyObject *dg, PyObject *addr, long long *cnt)
{
    PyObject *parts = dg == NULL ? NULL : PyList_New(1);
    if (parts == NULL) {
        Py_XDECREF(dg);
        return -1;
    }
    PyList_SET_ITEM(parts, 0, dg);
    PyObject *r = PyObject_CallMethodObjArgs(sock, s_send_parts, parts, addr, NULL);
    Py_DECREF(parts);
    if (r == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_OSError))
            return -1;
        PyErr_Clear();
        cnt[C_SENDERR]++;
        return 0;
    }
    Py_DECREF(r);
    cnt[C_SENDMSG]++;
    return 1;
}

/* Endpoint._flush_batch in C, the same steps and counters: ep._batch is swapped for a new dict, then per
 * socket (in insertion order) one send_batch (sendmmsg, at most 64) at a time; a full buffer (0 sent): that
 * datagram with sock.send_parts (it waits), counted as a sendmsg; an OSError: a send_error drop, that
 * datagram skipped.  -1: a Python error (propagated). */
static int flush_batch(PyObject *ep, long long *cnt)
{
    PyObject *batch = PyObject_GetAttr(ep, s_batch);
    if (batch == NULL)
        return -1;
    if (!PyDict_Check(batch) || PyDict_GET_SIZE(batch) == 0) {
        Py_DECREF(batch);
        return 0;
    }
    PyObject *fresh = PyDict_New();
    if (fresh == NULL || PyObject_SetAttr(ep, s_batch, fresh) < 0) {
        Py_XDECREF(fresh);
        Py_DECREF(batch);
        return -1;
    }
    Py_DECREF(fresh);
    int rc = 0;
    Py_ssize_t pos = 0;
    PyObject *sock, *items;
    while (rc == 0 && PyDict_Next(batch, &pos, &sock, &items)) {
        if (!PyList_Check(items))
            continue;
        PyObject *sk = PyObject_GetAttr(sock, s_sock);
        PyObject *fo = sk == NULL ? NULL : PyObject_CallMethodNoArgs(sk, s_fileno);
        Py_XDECREF(sk);
        if (fo == NULL) {
            rc = -1;
            break;
        }
        Py_ssize_t len = PyList_GET_SIZE(items), done = 0;
        while (done < len) {
            PyObject *chunk = done || len > 64 ? PyList_GetSlice(items, done, done + 64) : (Py_INCREF(items), items);
            PyObject *r = chunk == NULL ? NULL : PyObject_CallFunctionObjArgs(f_send_batch, fo, chunk, NULL);
            Py_XDECREF(chunk);
            if (r == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_OSError)) {
                    rc = -1;
                    break;
                }
                PyErr_Clear();
                cnt[C_SENDERR]++;
                done++;
                continue;
            }
            long sent = PyLong_AsLong(r);
            Py_DECREF(r);
            cnt[C_SENDMMSG]++;
            if (sent == 0) {
                PyObject *item = PyList_GET_ITEM(items, done); /* (datagram, addr) */
                int one = send_one(sock, Py_NewRef(PyTuple_GET_ITEM(item, 0)), PyTuple_GET_ITEM(item, 1), cnt);
                if (one < 0) {
                    rc = -1;
                    break;
                }
                if (one == 0) { /* a send_error drop: that datagram skipped */
                    done++;
                    continue;
                }
                sent = 1;
            } else if (sent < 0) {
                PyErr_Clear();
                sent = 1;
            }
            done += sent;
        }
        Py_DECREF(fo);
    }
    Py_DECREF(batch);
    return rc;
}

/* ---- the C-owned batch of single datagrams (Endpoint._send's "one" branch + _flush_batch, in C) ----------
 *
 * Per TX socket (the index in conf's socket tuple) up to BATCH_FLUSH datagrams, their bytes in one buffer
 * and their sockaddr; sockets flushed in the order of their first datagram (ep._batch's dict order).  The
 * same flush points as the Python loop: 64 datagrams for one socket (then every socket), before a
 * super-packet, at the end of a wakeup.  The batch also stays across a hand-back: what Python's _tx_frame
 * may add to ep._batch then comes after it.  So at a return that does not flush (a hand-back, the frame
 * limit, a moved generation, EINTR, stop) the C batch is EXPORTED to ep._batch (appended, as Python
 * objects: only at those returns), and a call IMPORTS ep._batch into its C batch first: the same lists,
 * the same order, the same sendmmsg calls and counters as with ep._batch alone. */
typedef struct {
    size_t off, len;
    struct sockaddr_storage ss;
    socklen_t sl;
    PyObject *addr; /* a new reference: send_parts' address on a full buffer, and the export */
} cb_item;

typedef struct {
    int fd, fd_known, used; /* fd: sock.sock.fileno() once fd_known; used: in the order list */
    int n;
    cb_item items[BATCH_FLUSH];
    uint8_t *data;
    size_t len, cap;
} cb_sock;

typedef struct {
    PyObject *socks; /* the conf's tuple (borrowed) */
    Py_ssize_t nsocks;
    cb_sock *s; /* nsocks of them, allocated at the first datagram */
    int *order, norder;
} cbatch;

static void cb_release_sock(cb_sock *k)
{
    for (int i = 0; i < k->n; i++)
        Py_CLEAR(k->items[i].addr);
    k->n = 0;
    k->len = 0;
}

static void cb_free(cbatch *b)
{
    if (b->s != NULL) {
        for (Py_ssize_t i = 0; i < b->nsocks; i++) {
            cb_release_sock(&b->s[i]);
            free(b->s[i].data);
        }
    }
    free(b->s);
    free(b->order);
    b->s = NULL;
    b->order = NULL;
    b->norder = 0;
}

/* room for one datagram of len bytes on socket si: a pointer to write it to (valid until the next add),
 * the item filled with the address (a new reference to addr); NULL with MemoryError */
static uint8_t *cb_add(cbatch *b, Py_ssize_t si, size_t len, const struct sockaddr_storage *ss, socklen_t sl,
                       PyObject *addr)
{
    if (b->s == NULL) {
        b->s = calloc((size_t)b->nsocks, sizeof *b->s);
        b->order = calloc((size_t)b->nsocks, sizeof *b->order);
        if (b->s == NULL || b->order == NULL) {
            free(b->s);
            free(b->order);
            b->s = NULL;
            b->order = NULL;
            PyErr_NoMemory();
            return NULL;
        }
    }
    cb_sock *k = &b->s[si];
    if (k->len + len > k->cap) {
        size_t c = k->cap ? k->cap : 4096;
        while (c < k->len + len)
            c *= 2;
        uint8_t *q = realloc(k->data, c);
        if (q == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        k->data = q;
        k->cap = c;
    }
    if (!k->used) {
        k->used = 1;
        b->order[b->norder++] = (int)si;
    }
    cb_item *it = &k->items[k->n++];
    it->off = k->len;
    it->len = len;
    memcpy(&it->ss, ss, sl);
    it->sl = sl;
    it->addr = Py_NewRef(addr);
    k->len += len;
    return k->data + it->off;
}

/* one socket's datagrams: sendmmsg (MSG_DONTWAIT, GIL released) from where the last one stopped; nothing
 * taken (a full buffer): that datagram with sock.send_parts (it waits), a sendmsg; an error: a send_error
 * drop, that datagram skipped (endpoint._flush_batch).  -1: a Python error. */
static int cb_flush_sock(cbatch *b, Py_ssize_t si, long long *cnt)
{
    cb_sock *k = &b->s[si];
    PyObject *sock = PyTuple_GET_ITEM(b->socks, si);
    int rc = 0;
    if (!k->fd_known) { /* a closed socket's -1 too: its sendmmsg fails (EBADF), send_error drops as in Python */
        PyObject *sk = PyObject_GetAttr(sock, s_sock);
        PyObject *fo = sk == NULL ? NULL : PyObject_CallMethodNoArgs(sk, s_fileno);
        Py_XDECREF(sk);
        long fd = fo == NULL ? -1 : PyLong_AsLong(fo);
        Py_XDECREF(fo);
        if (PyErr_Occurred() || fd < -1 || fd > INT_MAX) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "tx_burst: a TX socket's fileno() is out of range");
            cb_release_sock(k);
            return -1;
        }
        k->fd = (int)fd;
        k->fd_known = 1;
    }
    struct mmsghdr msgs[BATCH_FLUSH];
    struct iovec iov[BATCH_FLUSH];
    int done = 0;
    while (done < k->n) {
        int cntm = k->n - done;
        memset(msgs, 0, sizeof msgs[0] * (size_t)cntm);
        for (int i = 0; i < cntm; i++) {
            cb_item *it = &k->items[done + i];
            iov[i].iov_base = k->data + it->off;
            iov[i].iov_len = it->len;
            msgs[i].msg_hdr.msg_name = &it->ss;
            msgs[i].msg_hdr.msg_namelen = it->sl;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int r, e;
        Py_BEGIN_ALLOW_THREADS
        r = sendmmsg(k->fd, msgs, (unsigned)cntm, MSG_DONTWAIT);
        e = errno;
        Py_END_ALLOW_THREADS
        if (r < 0 && e != EAGAIN && e != EWOULDBLOCK) {
            cnt[C_SENDERR]++; /* send_batch raised: not counted as a sendmmsg call */
            done++;
            continue;
        }
        cnt[C_SENDMMSG]++;
        if (r <= 0) {
            cb_item *it = &k->items[done];
            int one = send_one(sock, PyBytes_FromStringAndSize((const char *)k->data + it->off, (Py_ssize_t)it->len),
                               it->addr, cnt);
            if (one < 0) {
                rc = -1;
                break;
            }
            if (one == 0) { /* a send_error drop: that datagram skipped */
                done++;
                continue;
            }
            r = 1;
        }
        done += r;
    }
    cb_release_sock(k);
    return rc;
}

/* every socket's datagrams, in the order of their first one */
static int cb_flush(cbatch *b, long long *cnt)
{
    int rc = 0;
    for (int i = 0; i < b->norder; i++) {
        cb_sock *k = &b->s[b->order[i]];
        k->used = 0;
        if (rc == 0)
            rc = cb_flush_sock(b, b->order[i], cnt);
        else
            cb_release_sock(k);
    }
    b->norder = 0;
    return rc;
}

/* the C batch appended to ep._batch (the Python loop flushes it, or the next call imports it again) */
static int cb_export(cbatch *b, PyObject *ep)
{
    if (b->norder == 0)
        return 0;
    int rc = 0;
    PyObject *batch = PyObject_GetAttr(ep, s_batch);
    if (batch != NULL && !PyDict_Check(batch)) {
        Py_DECREF(batch);
        batch = PyDict_New();
        if (batch != NULL && PyObject_SetAttr(ep, s_batch, batch) < 0)
            Py_CLEAR(batch);
    }
    if (batch == NULL)
        rc = -1;
    for (int i = 0; i < b->norder; i++) {
        Py_ssize_t si = b->order[i];
        cb_sock *k = &b->s[si];
        k->used = 0;
        PyObject *sock = PyTuple_GET_ITEM(b->socks, si);
        PyObject *items = rc == 0 ? PyDict_GetItemWithError(batch, sock) : NULL;
        if (rc == 0 && items == NULL) {
            if (PyErr_Occurred() || (items = PyList_New(0)) == NULL || PyDict_SetItem(batch, sock, items) < 0) {
                Py_XDECREF(items);
                rc = -1;
            } else {
                Py_DECREF(items); /* the dict holds it */
            }
        }
        for (int j = 0; rc == 0 && j < k->n; j++) {
            cb_item *it = &k->items[j];
            PyObject *dg = PyBytes_FromStringAndSize((const char *)k->data + it->off, (Py_ssize_t)it->len);
            PyObject *t = dg == NULL ? NULL : PyTuple_Pack(2, dg, it->addr);
            Py_XDECREF(dg);
            if (t == NULL || PyList_Append(items, t) < 0)
                rc = -1;
            Py_XDECREF(t);
        }
        cb_release_sock(k);
    }
    b->norder = 0;
    Py_XDECREF(batch);
    return rc;
}

/* ep._batch (datagrams Python's _tx_frame batched after an earlier hand-back) taken into the C batch, ahead
 * of what this call adds; ep._batch becomes a new dict.  What the C batch cannot take (a socket not in the
 * conf's tuple, an unexpected shape) is flushed at once by flush_batch instead (the Python-object path). */
static int cb_import(cbatch *b, PyObject *ep, long long *cnt)
{
    PyObject *batch = PyObject_GetAttr(ep, s_batch);
    if (batch == NULL)
        return -1;
    if (!PyDict_Check(batch) || PyDict_GET_SIZE(batch) == 0) {
        Py_DECREF(batch);
        return 0;
    }
    Py_ssize_t pos = 0;
    PyObject *sock, *items;
    int ok = 1;
    while (ok && PyDict_Next(batch, &pos, &sock, &items)) {
        Py_ssize_t si = 0;
        while (si < b->nsocks && PyTuple_GET_ITEM(b->socks, si) != sock)
            si++;
        ok = si < b->nsocks && PyList_Check(items) && PyList_GET_SIZE(items) < BATCH_FLUSH;
        for (Py_ssize_t j = 0; ok && j < PyList_GET_SIZE(items); j++) {
            PyObject *t = PyList_GET_ITEM(items, j);
            ok = PyTuple_Check(t) && PyTuple_GET_SIZE(t) == 2 && PyBytes_Check(PyTuple_GET_ITEM(t, 0));
        }
    }
    if (!ok) {
        Py_DECREF(batch);
        return flush_batch(ep, cnt);
    }
    PyObject *fresh = PyDict_New();
    if (fresh == NULL || PyObject_SetAttr(ep, s_batch, fresh) < 0) {
        Py_XDECREF(fresh);
        Py_DECREF(batch);
        return -1;
    }
    Py_DECREF(fresh);
    int rc = 0;
    pos = 0;
    while (rc == 0 && PyDict_Next(batch, &pos, &sock, &items)) {
        Py_ssize_t si = 0;
        while (PyTuple_GET_ITEM(b->socks, si) != sock)
            si++;
        for (Py_ssize_t j = 0; rc == 0 && j < PyList_GET_SIZE(items); j++) {
            PyObject *t = PyList_GET_ITEM(items, j), *dg = PyTuple_GET_ITEM(t, 0), *addr = PyTuple_GET_ITEM(t, 1);
            struct sockaddr_storage ss;
            socklen_t sl;
            if (un_sockaddr(addr, &ss, &sl) < 0) { /* as send_batch: the error propagates */
                rc = -1;
                break;
            }
            uint8_t *w = cb_add(b, si, (size_t)PyBytes_GET_SIZE(dg), &ss, sl, addr);
            if (w == NULL)
                rc = -1;
            else
                memcpy(w, PyBytes_AS_STRING(dg), (size_t)PyBytes_GET_SIZE(dg));
        }
    }
    Py_DECREF(batch);
    return rc;
}

/* sock.send_segments(data[0:n] (copied), row_len, addr) (Python: it waits for buffer space, switches GSO off after
 * an EIO, cuts): the sendmsg count, 0 with *send_error for an OSError, -1 for another Python error. */
static long send_rest_py(PyObject *sock, const char *data, Py_ssize_t n, long row_len, PyObject *addr,
                         int *send_error)
{
    PyObject *rest = PyBytes_FromStringAndSize(data, n);
    PyObject *rl = rest == NULL ? NULL : PyLong_FromLong(row_len);
    PyObject *r = rl == NULL ? NULL : PyObject_CallMethodObjArgs(sock, s_send_segments, rest, rl, addr, NULL);
    Py_XDECREF(rest);
    Py_XDECREF(rl);
    if (r == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_OSError))
            return -1;
        PyErr_Clear(); /* endpoint._send: an OSError is a send_error drop */
        *send_error = 1;
        return 0;
    }
    long calls = PyLong_AsLong(r);
    Py_DECREF(r);
    return calls;
}

/* io/udp.py UdpSocket.send_segments for one super-packet: its chunks (up to UDP_MAX_SEGMENTS datagrams and
 * max_payload bytes per sendmsg(UDP_SEGMENT), a lone last datagram without it) sent here, GIL released,
 * MSG_DONTWAIT.  A full buffer (EAGAIN), EIO (the device cannot checksum: GSO goes off) or EINTR: the Python
 * method sends the rest (the same chunks from there on; it waits, switches GSO off).  GSO already off or
 * arguments it would refuse: the Python method for all of it.  Returns the sendmsg count; 0 with
 * *send_error set for an OSError (the count is then not added, as endpoint._send's exception skips it);
 * -1 for a Python error. */
static long send_super(PyObject *sock, const char *base, Py_ssize_t n, long row_len, PyObject *addr, int *send_error)
{
    *send_error = 0;
    PyObject *a = PyObject_GetAttr(sock, s_gso_disabled);
    PyObject *mp = a == NULL ? NULL : PyObject_GetAttr(sock, s_max_payload);
    int disabled = a == NULL ? -1 : PyObject_IsTrue(a);
    long max_payload = mp == NULL ? -1 : PyLong_AsLong(mp);
    Py_XDECREF(a);
    Py_XDECREF(mp);
    if (disabled < 0 || max_payload < 0 || PyErr_Occurred())
        PyErr_Clear();
    int fast = disabled == 0 && max_payload > 0 && row_len > 0 && row_len <= max_payload && n > 0;
    struct sockaddr_storage ss;
    socklen_t sl;
    int fd = -1;
    if (fast && addr_of(addr, &ss, &sl) == 0) {
        PyObject *fo = PyObject_CallMethodNoArgs(sock, s_fileno);
        fd = fo == NULL ? -1 : (int)PyLong_AsLong(fo);
        Py_XDECREF(fo);
        if (fd < 0)
            PyErr_Clear();
    }
    if (fd < 0)
        return send_rest_py(sock, base, n, row_len, addr, send_error);
    long rows = UDP_MAX_SEGS < max_payload / row_len ? UDP_MAX_SEGS : max_payload / row_len;
    Py_ssize_t per_call = (Py_ssize_t)(rows * row_len), off = 0;
    long calls = 0;
    while (off < n) {
        Py_ssize_t end = n - off <= row_len ? n : (off + per_call < n ? off + per_call : n);
        int err;
        ssize_t r = un_send_segments(fd, &ss, sl, base + off, (size_t)(end - off), (unsigned)row_len, MSG_DONTWAIT,
                                     &err);
        if (r >= 0) {
            calls++;
            off = end;
            continue;
        }
        if (err != EAGAIN && err != EWOULDBLOCK && err != EIO && err != EINTR) {
            *send_error = 1;
            return 0;
        }
        /* nothing of this chunk was sent: the Python method sends the rest, from this chunk on */
        long more = send_rest_py(sock, base + off, n - off, row_len, addr, send_error);
        return more <= 0 ? more : calls + more;
    }
    return calls;
}

/* a scratch buffer of at least need bytes (grown, never shrunk within a call); -1: no memory */
static int grow(uint8_t **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = need < 65536 ? 65536 : need;
    uint8_t *q = realloc(*p, c);
    if (q == NULL)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

static PyObject *tx_burst(PyObject *self, PyObject *args)
{
    int fd;
    Py_buffer b, sb = {0}, gb = {0}, rb = {0};
    PyObject *fdo, *ep, *snap, *conf, *stop = Py_None, *gen = Py_None, *rro = Py_None;
    long long linger = 0, snap_gen = 0;
    int quantum = TXQ_QUANTUM;
    /* the TAP's queues (more than one: the round robin, see "the queues" above) */
    int qfds[TXQ_MAX] = {-1}, nq = 1, cur = 0, left = 0, fresh = 0, have_rr = 0;
    uint64_t ready = 0;
    struct pollfd pfds[TXQ_MAX];
    /* C-owned scratch: a frame with its checksum finished, a super-packet's rows (freed at the end) */
    uint8_t *work = NULL, *rows = NULL;
    size_t work_cap = 0, rows_cap = 0;
    /* the C batch of single datagrams, and per peer of the snapshot its parsed entry (at first use) */
    cbatch cb = {0};
    struct peer_c {
        int state; /* 0 not parsed yet, 1 usable, 2 malformed (every frame to it is handed back) */
        int mode, ss_ok;
        PyObject *addr;
        struct sockaddr_storage ss;
        socklen_t sl;
    } *pc = NULL;
    if (!PyArg_ParseTuple(args, "Ow*OO!O!|LOOiO", &fdo, &b, &ep, &PyTuple_Type, &snap, &PyTuple_Type, &conf,
                          &linger, &stop, &gen, &quantum, &rro))
        return NULL;
    if (PyTuple_Check(fdo)) {
        nq = (int)PyTuple_GET_SIZE(fdo);
        if (nq < 1 || nq > TXQ_MAX) {
            PyErr_Format(PyExc_ValueError, "tx_burst: %d TAP queues (1..%d)", nq, TXQ_MAX);
            PyBuffer_Release(&b);
            return NULL;
        }
        for (int i = 0; i < nq; i++) {
            qfds[i] = as_fd(PyTuple_GET_ITEM(fdo, i));
            if (qfds[i] == -1 && PyErr_Occurred()) {
                PyBuffer_Release(&b);
                return NULL;
            }
            pfds[i].fd = qfds[i];
            pfds[i].events = POLLIN;
        }
    } else {
        qfds[0] = as_fd(fdo);
        if (qfds[0] == -1 && PyErr_Occurred()) {
            PyBuffer_Release(&b);
            return NULL;
        }
    }
    fd = qfds[0];
    if (quantum < 1)
        quantum = 1;
    PyObject *macs, *peers, *ports, *plain, *socks;
    double deadline;
    long max_frames;
    unsigned vni, opt_class, max_levels, max_dg;
    int have_stop = 0, have_gen = 0;
    if (!PyArg_ParseTuple(snap, "O!O!dl|L", &PyDict_Type, &macs, &PyTuple_Type, &peers, &deadline, &max_frames,
                          &snap_gen) ||
        !PyArg_ParseTuple(conf, "IIOIIO!O!", &vni, &opt_class, &ports, &max_levels, &max_dg, &PyBytes_Type, &plain,
                          &PyTuple_Type, &socks)) {
        PyBuffer_Release(&b);
        return NULL;
    }
    if (stop != Py_None) {
        if (PyObject_GetBuffer(stop, &sb, PyBUF_SIMPLE) < 0)
            goto fail;
        have_stop = 1;
        if (sb.len < 1) {
            PyErr_SetString(PyExc_ValueError, "tx_burst: the stop flag is empty");
            goto fail;
        }
    }
    if (gen != Py_None) {
        if (PyObject_GetBuffer(gen, &gb, PyBUF_SIMPLE) < 0)
            goto fail;
        have_gen = 1;
        if (gb.len < (Py_ssize_t)sizeof(long long)) {
            PyErr_SetString(PyExc_ValueError, "tx_burst: the generation word is shorter than 8 bytes");
            goto fail;
        }
    }
    if (rro != Py_None && nq > 1) { /* the round robin's place, kept across calls: int32 cur, int32 left */
        if (PyObject_GetBuffer(rro, &rb, PyBUF_WRITABLE) < 0)
            goto fail;
        have_rr = 1;
        if (rb.len < 8) {
            PyErr_SetString(PyExc_ValueError, "tx_burst: the round-robin state is shorter than 8 bytes");
            goto fail;
        }
        int32_t st[2];
        memcpy(st, rb.buf, sizeof st);
        cur = st[0] >= 0 && st[0] < nq ? st[0] : 0;
        left = st[1] > 0 && st[1] <= quantum ? st[1] : 0;
        ready = left > 0 ? (uint64_t)1 << cur : 0; /* go on with the current queue; a failed read polls */
    }
    if (max_frames < 1)
        max_frames = 1; /* every call makes progress */
    /* the nested ports, once per call (was: per frame); not parseable: every frame that needs them is
     * handed back, as the per-frame Python call failed for it */
    un_ports pt;
    int ports_ok = un_parse_ports(ports, &pt);
    if (ports_ok < 0)
        PyErr_Clear();
    ports_ok = ports_ok == 0;
    const uint8_t *plain_p = (const uint8_t *)PyBytes_AS_STRING(plain);
    size_t plain_len = (size_t)PyBytes_GET_SIZE(plain);

    Py_ssize_t nsocks = PyTuple_GET_SIZE(socks);
    uint8_t *buf = b.buf;
    size_t cap = (size_t)b.len;
    long long cnt[C_N] = {0};
    int rc = RC_EMPTY;
    long rn = 0, done = 0;
    const volatile uint8_t *stopb = have_stop ? (const volatile uint8_t *)sb.buf : NULL;
    /* the linger window: from the call's start, at most up to the snapshot's deadline (Python rebuilds then) */
    long long window_end = 0;
    if (linger > 0) {
        long long start = mono_ns();
        window_end = linger > LLONG_MAX - start ? LLONG_MAX : start + linger;
        if (deadline > 0 && deadline * 1e9 < (double)window_end)
            window_end = (long long)(deadline * 1e9);
    }
    if (nsocks == 0) {
        PyErr_SetString(PyExc_ValueError, "tx_burst: no TX sockets");
        goto fail;
    }
    cb.socks = socks;
    cb.nsocks = nsocks;
    if (cb_import(&cb, ep, cnt) < 0) /* what _tx_frame batched after a hand-back goes first */
        goto fail;
    for (;;) {
        if (done >= max_frames) {
            rc = RC_LIMIT;
            break;
        }
        if (stopb && stopb[0]) {
            rc = RC_STOP; /* the endpoint stops: nothing more is read */
            break;
        }
        if (have_gen && gen_now(&gb) != snap_gen) {
            rc = RC_STALE; /* the snapshot may be stale: Python rebuilds it, the frame stays in the TAP */
            break;
        }
        ssize_t n;
        int e;
        int rfd = fd;
        if (nq > 1 && (left <= 0 || !(ready >> cur & 1))) {
            /* the current queue's turn is over (K frames, or it was empty): ONE poll(0) over all queues
             * (none after a linger wait: its revents are fresh), then the next ready queue after it */
            if (!fresh) {
                int pr, pe;
                Py_BEGIN_ALLOW_THREADS
                pr = poll(pfds, (nfds_t)nq, 0);
                pe = errno;
                Py_END_ALLOW_THREADS
                if (pr < 0) {
                    rc = pe == EINTR ? RC_EINTR : RC_READ_ERROR;
                    rn = pe == EINTR ? 0 : pe;
                    break;
                }
                ready = un_poll_ready(pfds, nq);
            }
            fresh = 0;
            int nx = un_next_ready(ready, cur, nq);
            left = 0;
            if (nx >= 0) {
                cur = nx;
                left = quantum;
            }
        }
        if (nq > 1 && left <= 0) {
            n = -1; /* every queue is empty: as an empty single queue */
            e = EAGAIN;
        } else {
            if (nq > 1)
                rfd = qfds[cur];
            Py_BEGIN_ALLOW_THREADS
            n = read(rfd, buf, cap);
            e = errno;
            Py_END_ALLOW_THREADS
            if (nq > 1) {
                if (n < 0 && (e == EAGAIN || e == EWOULDBLOCK)) {
                    ready &= ~((uint64_t)1 << cur); /* this queue ran dry: poll, the next one */
                    left = 0;
                    continue;
                }
                left--;
            }
        }
        if (n < 0) {
            if (e == EAGAIN || e == EWOULDBLOCK) {
                rc = RC_EMPTY;
                if (linger <= 0)
                    break;
                /* the end of a wakeup: the batch leaves before we sleep (as the per-wakeup flush) */
                if (cb_flush(&cb, cnt) < 0)
                    goto fail;
                if (stopb && stopb[0]) {
                    rc = RC_STOP;
                    break;
                }
                if (have_gen && gen_now(&gb) != snap_gen) {
                    rc = RC_STALE;
                    break;
                }
                long long now = mono_ns();
                if (now >= window_end)
                    break; /* the window is over with the TAP empty: EMPTY */
                long long wait = window_end - now < LINGER_SLICE_NS ? window_end - now : LINGER_SLICE_NS;
                struct pollfd pfd = {.fd = fd, .events = POLLIN};
                struct timespec to = {.tv_sec = (time_t)(wait / 1000000000LL), .tv_nsec = (long)(wait % 1000000000LL)};
                int pr, pe;
                Py_BEGIN_ALLOW_THREADS
                pr = nq > 1 ? ppoll(pfds, (nfds_t)nq, &to, NULL) : ppoll(&pfd, 1, &to, NULL);
                pe = errno;
                Py_END_ALLOW_THREADS
                if (nq > 1 && pr >= 0) { /* the wait's revents: which queues to serve next (no poll(0)) */
                    ready = pr > 0 ? un_poll_ready(pfds, nq) : 0;
                    fresh = 1;
                    left = 0;
                }
                cnt[C_WAIT_NS] += mono_ns() - now;
                if (pr < 0) {
                    if (pe == EINTR) {
                        rc = RC_EINTR;
                    } else {
                        rc = RC_READ_ERROR;
                        rn = pe;
                    }
                    break;
                }
                if (pr > 0)
                    cnt[C_WAKEUPS]++;
                continue; /* ready (a frame, or an error the read reports), or the slice is over: read again */
            } else if (e == EINTR)
                rc = RC_EINTR;
            else {
                rc = RC_READ_ERROR;
                rn = e;
            }
            break;
        }
        if (n == 0) {
            rc = RC_EMPTY;
            break;
        }
        done++;
        rc = RC_HANDBACK;
        rn = (long)n;
        /* -- the decisions: any doubt hands the frame back, nothing counted yet -- */
        if ((size_t)n < VNET + 14)
            break;
        const uint8_t *f = buf + VNET;
        size_t flen = (size_t)n - VNET;
        if (f[0] & 1) /* broadcast / multicast: flooding is Python's */
            break;
        if (deadline > 0) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            if ((double)ts.tv_sec + ts.tv_nsec * 1e-9 >= deadline)
                break; /* the snapshot may be stale: Python decides, then rebuilds it */
        }
        if (have_gen && gen_now(&gb) != snap_gen)
            break; /* changed while the read ran (GIL released): Python decides for this frame */
        PyObject *mac = PyBytes_FromStringAndSize((const char *)f, 6);
        if (mac == NULL)
            goto fail;
        PyObject *idx = PyDict_GetItemWithError(macs, mac);
        Py_DECREF(mac);
        if (idx == NULL) {
            if (PyErr_Occurred())
                goto fail;
            break; /* unknown destination */
        }
        Py_ssize_t pi = PyLong_AsSsize_t(idx);
        if (pi < 0 || pi >= PyTuple_GET_SIZE(peers)) {
            PyErr_Clear();
            break;
        }
        if (pc == NULL && (pc = calloc((size_t)PyTuple_GET_SIZE(peers), sizeof *pc)) == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        struct peer_c *pe = &pc[pi];
        if (pe->state == 0) { /* once per peer and call: (sockaddr, mode), the address as a sockaddr */
            PyObject *peer = PyTuple_GET_ITEM(peers, pi);
            pe->state = 2;
            if (PyArg_ParseTuple(peer, "Oi", &pe->addr, &pe->mode) && pe->mode >= 0 && pe->mode <= 2) {
                pe->state = 1;
                pe->ss_ok = addr_of(pe->addr, &pe->ss, &pe->sl) == 0;
            }
            PyErr_Clear();
        }
        if (pe->state != 1)
            break;
        PyObject *paddr = pe->addr; /* borrowed: the snapshot holds it for the call */
        int mode = pe->mode;
        if (buf[1] != 0) {
            /* a GSO header: the reference's validation (VnetHdr.check); gso_type 0 passes it whatever the
             * other fields (finish_csum checks csum_start/offset against the frame); a reject: hand back */
            unsigned vf[13];
            if (un_vnet_check(buf, (size_t)n, vf, NULL) < 0)
                break;
        }
        /* the vnet fields (little-endian; wire/vnet.py): validated by vnet_check above */
        unsigned flags = buf[0], gt = buf[1], gso_size = buf[4] | buf[5] << 8;
        unsigned cs = buf[6] | buf[7] << 8, co = buf[8] | buf[9] << 8, outer_th = buf[20] | buf[21] << 8;
        uint32_t fh = flow_hash(f, flen);
        Py_ssize_t si = (Py_ssize_t)(fh % (uint32_t)nsocks);
        PyObject *sock = PyTuple_GET_ITEM(socks, si);
        if (gt == 0) {
            /* a single datagram (ACKs): txplan.build's non-GSO branch.  The checksum is finished in a copy:
             * a frame handed back after it is buf[:n] as read */
            const uint8_t *fp = f;
            if (flags & 1) {
                if (grow(&work, &work_cap, flen) < 0 || un_finish_csum(f, flen, cs, co, work, NULL) < 0)
                    break;
                fp = work;
            }
            uint8_t hb[UN_MAX_PREFIX];
            const uint8_t *hdr = hb;
            size_t hl = 0, off = 0;
            int fast = 0;
            if (mode == 2) {
                if (!ports_ok || un_fold_one(fp, flen, vni, opt_class, &pt, max_levels, hb, &hl, &off) < 0 ||
                    off > flen)
                    break; /* deferred to the reference */
                fast = 1;
            } else if (mode == 1) {
                int l = ports_ok ? un_hint_prefix(fp, flen, vni, &pt, 0, hb) : -1;
                if (l < 0)
                    break;
                hl = (size_t)l;
            } else {
                hdr = plain_p;
                hl = plain_len;
            }
            if (!pe->ss_ok)
                break; /* an address C cannot use: the reference */
            /* the datagram straight into the C batch: committed, the frame is ours from here on */
            uint8_t *w = cb_add(&cb, si, hl + flen - off, &pe->ss, pe->sl, paddr);
            if (w == NULL)
                goto fail;
            memcpy(w, hdr, hl);
            memcpy(w + hl, fp + off, flen - off);
            cnt[C_FRAMES]++;
            cnt[C_BYTES] += (long long)flen;
            cnt[C_FAST] += fast;
            if (cb.s[si].n >= BATCH_FLUSH && cb_flush(&cb, cnt) < 0) /* endpoint._send: 64 in a list */
                goto fail;
            cnt[C_DGRAMS]++;
            cnt[C_HIST]++;
            cnt[C_PLAIN + mode]++;
            continue;
        }
        /* a super-packet: txplan._build_gso on the socket path, TCP only (USO, UFO: the reference) */
        unsigned base = gt & ~(0x80u | 0x60u) & 0xFF, tunnel = gt & 0x60;
        if (base != 0x01 && base != 0x04)
            break;
        un_gso_plan pl;
        uint8_t hp[16];
        if (mode == 2 && tunnel) {
            if (!ports_ok || un_fold_gso_plan(f, flen, vni, opt_class, &pt, max_levels, max_dg, gso_size, &pl) < 0)
                break; /* deferred: the reference decides */
        } else {
            const uint8_t *pre = plain_p;
            size_t P = plain_len;
            if (mode == 1) {
                int l = ports_ok ? un_hint_prefix(f, flen, vni, &pt, 1, hp) : -1;
                if (l < 0)
                    break;
                pre = hp;
                P = (size_t)l;
            }
            unsigned segfl = 1u | (mode == 1 ? 2u : 0u); /* SEG_FIX_IP_IDS | SEG_FIXED_NESTED_IDS (hint) */
            if (un_plain_gso_plan(pre, P, f, flen, tunnel ? outer_th : 0u, max_dg, gso_size, segfl, &pl) < 0)
                break;
        }
        if (grow(&rows, &rows_cap, pl.nbytes) < 0)
            break; /* no memory: the reference (it raises, the frame is dropped as Python decides) */
        Py_BEGIN_ALLOW_THREADS
        un_gso_segment(&pl, f, flen, rows);
        Py_END_ALLOW_THREADS
        long row_len = (long)pl.row_len, count = (long)pl.count;
        cnt[C_FRAMES]++;
        cnt[C_BYTES] += (long long)flen;
        cnt[C_FAST]++;
        if (cb_flush(&cb, cnt) < 0) /* a flow's small frames leave before its super-packet */
            goto fail;
        int serr;
        long calls = send_super(sock, (const char *)rows, (Py_ssize_t)pl.nbytes, row_len, paddr, &serr);
        if (calls < 0)
            goto fail;
        if (serr) {
            cnt[C_SENDERR]++;
            continue;
        }
        cnt[C_SENDMSG] += calls;
        cnt[C_DGRAMS] += count;
        cnt[C_SUPER]++;
        cnt[C_HIST + bucket(count)]++;
        cnt[C_PLAIN + mode]++;
    }
    /* the end of the wakeup (the queue is empty, or the read failed): the batch leaves now, as
     * Endpoint._tx_loop's flush after its read loop; otherwise (a hand-back: _tx_frame may add to it) it
     * goes to ep._batch, after what is there */
    if ((rc == RC_EMPTY || rc == RC_READ_ERROR) ? cb_flush(&cb, cnt) < 0 : cb_export(&cb, ep) < 0)
        goto fail;
    cb_free(&cb);
    free(pc);
    free(work);
    free(rows);
    PyBuffer_Release(&b);
    if (have_stop)
        PyBuffer_Release(&sb);
    if (have_gen)
        PyBuffer_Release(&gb);
    if (have_rr) {
        int32_t st[2] = {cur, left};
        memcpy(rb.buf, st, sizeof st);
        PyBuffer_Release(&rb);
    }
    PyObject *ct = PyTuple_New(C_N);
    if (ct == NULL)
        return NULL;
    for (int i = 0; i < C_N; i++) {
        PyObject *v = PyLong_FromLongLong(cnt[i]);
        if (v == NULL) {
            Py_DECREF(ct);
            return NULL;
        }
        PyTuple_SET_ITEM(ct, i, v);
    }
    return Py_BuildValue("(ilN)", rc, rn, ct);
fail:
    if (cb.norder) { /* what is batched stays batched (in ep._batch), the error goes on */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (cb_export(&cb, ep) < 0)
            PyErr_Clear();
        PyErr_Restore(et, ev, tb);
    }
    cb_free(&cb);
    free(pc);
    free(work);
    free(rows);
    PyBuffer_Release(&b);
    if (have_stop)
        PyBuffer_Release(&sb);
    if (have_gen)
        PyBuffer_Release(&gb);
    if (have_rr) {
        int32_t st[2] = {cur, left};
        memcpy(rb.buf, st, sizeof st);
        PyBuffer_Release(&rb);
    }
    return NULL;
}

static PyMethodDef txburst_methods[] = {
    {"tx_burst", tx_burst, METH_VARARGS,
     "tx_burst(fd, buf, ep, snap, conf, linger_ns=0, stop=None, gen=None) -> (rc, n, counts): the TX steady "
     "state for one TAP wakeup, or for every wakeup within linger_ns (csrc/txburst.c)"},
    {"crc32", tb_crc32, METH_VARARGS, "crc32(buf) -> int: zlib.crc32 (the TX burst's flow hash)"},
    {"flow_hash", tb_flow_hash, METH_VARARGS, "flow_hash(frame) -> int: endpoint.flow_hash in C"},
    {NULL, NULL, 0, NULL},
};

int udpnest_txburst_init(PyObject *module)
{
    crc_init();
    struct {
        PyObject **dst;
        const char *name;
    } fns[] = {{&f_send_batch, "send_batch"}};
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
        if ((*fns[i].dst = PyObject_GetAttrString(module, fns[i].name)) == NULL)
            return -1;
    if ((s_batch = PyUnicode_InternFromString("_batch")) == NULL ||
        (s_sock = PyUnicode_InternFromString("sock")) == NULL ||
        (s_send_parts = PyUnicode_InternFromString("send_parts")) == NULL ||
        (s_gso_disabled = PyUnicode_InternFromString("gso_disabled")) == NULL ||
        (s_max_payload = PyUnicode_InternFromString("max_payload")) == NULL ||
        (s_send_segments = PyUnicode_InternFromString("send_segments")) == NULL ||
        (s_fileno = PyUnicode_InternFromString("fileno")) == NULL)
        return -1;
    PyModule_AddIntConstant(module, "TXB_EMPTY", RC_EMPTY);
    PyModule_AddIntConstant(module, "TXB_HANDBACK", RC_HANDBACK);
    PyModule_AddIntConstant(module, "TXB_READ_ERROR", RC_READ_ERROR);
    PyModule_AddIntConstant(module, "TXB_EINTR", RC_EINTR);
    PyModule_AddIntConstant(module, "TXB_LIMIT", RC_LIMIT);
    PyModule_AddIntConstant(module, "TXB_STALE", RC_STALE);
    PyModule_AddIntConstant(module, "TXB_STOP", RC_STOP);
    PyModule_AddIntConstant(module, "TXB_QUANTUM", TXQ_QUANTUM);
    PyModule_AddIntConstant(module, "TXB_MAX_QUEUES", TXQ_MAX);
    return PyModule_AddFunctions(module, txburst_methods);
}
