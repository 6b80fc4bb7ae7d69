/* The serving loop's receive and send path in C, for requests a service answers thousands of
 * times a second.
 *
 * Why C: in Python, a daemon spends ~80 µs of its loop thread per RUN on a loaded 2-core host
 * (pyzmq's per-frame objects, the msgpack header, dispatch, the reply's encoding), four times
 * what the socket itself costs, and the daemon must sustain 20,000 jobs/s. This module calls
 * libzmq directly: the very library pyzmq loaded (found through pyzmq's backend, see py_bind and
 * services/lane.py), on the socket pyzmq created, from the loop thread that owns that socket.
 *
 * - Lane.drain() receives whole messages. A request whose header is byte for byte one that the
 *   service has already decoded, validated and registered as a *route* (the request id aside,
 *   keyed exactly as protocol._repeat_key keys it) and whose tensor frames have the route's
 *   sizes goes to the route's callable as (id, peer, received_ns). Every other message goes to
 *   the Python path as Frame objects: zero-copy buffers, like pyzmq's.
 * - Lane.send() sends a reply whose header is head + msgpack(id) + tail + msgpack(body) and
 *   whose tensor frames are an Outputs' prepared messages (shared, not copied, per reply).
 * - pack() is the msgpack subset the replies need, byte for byte what msgpack-python's
 *   packb(obj, use_bin_type=True) writes (tests hold it to that).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* ---- libzmq, resolved at run time from the copy pyzmq loaded -------------------------------- */

typedef struct { _Alignas(8) unsigned char _[64]; } zmsg;  /* zmq_msg_t, libzmq >= 4.2 */

#define ZMQ_DONTWAIT 1
#define ZMQ_SNDMORE 2

static struct {
    int (*msg_init)(zmsg *);
    int (*msg_init_size)(zmsg *, size_t);
    int (*msg_recv)(zmsg *, void *, int);
    int (*msg_send)(zmsg *, void *, int);
    int (*msg_close)(zmsg *);
    int (*msg_copy)(zmsg *, zmsg *);
    int (*msg_move)(zmsg *, zmsg *);
    void *(*msg_data)(zmsg *);
    size_t (*msg_size)(const zmsg *);
    int (*msg_more)(const zmsg *);
    int (*errno_)(void);
    const char *(*strerror)(int);
    void (*version)(int *, int *, int *);
} Z;
static int z_bound = 0;

/* bind(path): path is pyzmq's compiled backend; dlsym on its handle searches it and the libraries
 * it links, breadth first, so each function found is the libzmq pyzmq's sockets live in. */
static PyObject *py_bind(PyObject *mod, PyObject *arg) {
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL) return NULL;
    /* RTLD_NOLOAD: only ever what is already in this process, never a second copy. */
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (h == NULL) return PyErr_Format(PyExc_OSError, "%s is not loaded: %s", path, dlerror());
#define SYM(field, name)                                                                          \
    if ((*(void **)&Z.field = dlsym(h, name)) == NULL)                                            \
        return PyErr_Format(PyExc_OSError, "%s has no %s", path, name);
    SYM(msg_init, "zmq_msg_init") SYM(msg_init_size, "zmq_msg_init_size") SYM(msg_recv, "zmq_msg_recv")
    SYM(msg_send, "zmq_msg_send") SYM(msg_close, "zmq_msg_close") SYM(msg_copy, "zmq_msg_copy")
    SYM(msg_move, "zmq_msg_move") SYM(msg_data, "zmq_msg_data") SYM(msg_size, "zmq_msg_size")
    SYM(msg_more, "zmq_msg_more") SYM(errno_, "zmq_errno") SYM(strerror, "zmq_strerror")
    SYM(version, "zmq_version")
#undef SYM
    int major, minor, patch;
    Z.version(&major, &minor, &patch);
    if (major != 4 || minor < 2)
        return PyErr_Format(PyExc_OSError, "libzmq %d.%d.%d: the lane needs 4.2 or later", major, minor, patch);
    z_bound = 1;
    return Py_BuildValue("(iii)", major, minor, patch);
}

static int need_zmq(void) {
    if (!z_bound) PyErr_SetString(PyExc_RuntimeError, "services._lane.bind() has not found libzmq");
    return z_bound;
}

static long long now_ns(void) {  /* time.monotonic_ns()'s clock */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- pack(): msgpack as msgpack-python's packb(obj, use_bin_type=True) writes it --------------- */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} Buf;

static int buf_reserve(Buf *b, size_t more) {
    if (b->n + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + more) cap *= 2;
    unsigned char *p = PyMem_Realloc(b->p, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const void *src, size_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->n, src, n);
    b->n += n;
    return 0;
}

/* A tag byte and an n-byte big-endian value. */
static int buf_tag(Buf *b, unsigned char tag, uint64_t v, int n) {
    if (buf_reserve(b, 9) < 0) return -1;
    b->p[b->n++] = tag;
    for (int i = n - 1; i >= 0; i--) b->p[b->n++] = (unsigned char)(v >> (8 * i));
    return 0;
}

static int pack_uint(Buf *b, uint64_t v) {
    if (v < 0x80) return buf_tag(b, (unsigned char)v, 0, 0);
    if (v < 0x100) return buf_tag(b, 0xcc, v, 1);
    if (v < 0x10000) return buf_tag(b, 0xcd, v, 2);
    if (v < 0x100000000ULL) return buf_tag(b, 0xce, v, 4);
    return buf_tag(b, 0xcf, v, 8);
}

static int pack_int(Buf *b, long long v) {
    if (v >= 0) return pack_uint(b, (uint64_t)v);
    if (v >= -32) return buf_tag(b, (unsigned char)(0xe0 | (v + 32)), 0, 0);
    if (v >= -128) return buf_tag(b, 0xd0, (uint64_t)v, 1);
    if (v >= -32768) return buf_tag(b, 0xd1, (uint64_t)v, 2);
    if (v >= -2147483648LL) return buf_tag(b, 0xd2, (uint64_t)v, 4);
    return buf_tag(b, 0xd3, (uint64_t)v, 8);
}

static int pack_len(Buf *b, size_t n, unsigned char fix, size_t fixmax, unsigned char t8, unsigned char t16,
                    unsigned char t32) {
    if (n < fixmax) return buf_tag(b, (unsigned char)(fix | n), 0, 0);
    if (t8 && n < 0x100) return buf_tag(b, t8, n, 1);
    if (n < 0x10000) return buf_tag(b, t16, n, 2);
    if (n <= 0xffffffffULL) return buf_tag(b, t32, n, 4);
    PyErr_SetString(PyExc_ValueError, "too large to pack");
    return -1;
}

#define PACK_LIMIT 1024  /* msgpack-python's recursion limit, counted the same way */

static int pack_items(Buf *b, PyObject *seq, int limit, int pairs);

static int pack(Buf *b, PyObject *o, int limit) {
    if (limit < 0) {
        PyErr_SetString(PyExc_ValueError, "recursion limit exceeded.");
        return -1;
    }
    if (o == Py_None) return buf_tag(b, 0xc0, 0, 0);
    if (o == Py_True) return buf_tag(b, 0xc3, 0, 0);
    if (o == Py_False) return buf_tag(b, 0xc2, 0, 0);
    if (PyLong_Check(o)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow == 0) return v == -1 && PyErr_Occurred() ? -1 : pack_int(b, v);
        unsigned long long u = overflow > 0 ? PyLong_AsUnsignedLongLong(o) : 0;
        if (overflow < 0 || (u == (unsigned long long)-1 && PyErr_Occurred())) {
            PyErr_Clear();
            PyErr_SetString(PyExc_OverflowError, "int too big to pack");
            return -1;
        }
        return pack_uint(b, u);
    }
    if (PyFloat_Check(o)) {
        double d = PyFloat_AS_DOUBLE(o);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        return buf_tag(b, 0xcb, bits, 8);
    }
    if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (s == NULL) return -1;
        return pack_len(b, (size_t)n, 0xa0, 32, 0xd9, 0xda, 0xdb) < 0 ? -1 : buf_put(b, s, (size_t)n);
    }
    if (PyBytes_Check(o)) {
        size_t n = (size_t)PyBytes_GET_SIZE(o);
        return pack_len(b, n, 0xc4, 0, 0xc4, 0xc5, 0xc6) < 0 ? -1 : buf_put(b, PyBytes_AS_STRING(o), n);
    }
    if (PyByteArray_Check(o) || PyMemoryView_Check(o)) {
        Py_buffer view;
        if (PyObject_GetBuffer(o, &view, PyBUF_SIMPLE) < 0) return -1;
        int rc = pack_len(b, (size_t)view.len, 0xc4, 0, 0xc4, 0xc5, 0xc6) < 0 ? -1 : buf_put(b, view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
        return rc;
    }
    if (PyList_CheckExact(o) || PyTuple_CheckExact(o)) return pack_items(b, o, limit, 0);
    if (PyDict_CheckExact(o)) {
        if (pack_len(b, (size_t)PyDict_GET_SIZE(o), 0x80, 16, 0, 0xde, 0xdf) < 0) return -1;
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(o, &pos, &k, &v)) {
            Py_INCREF(k);  /* a key's or value's own packing may not drop them from under us */
            Py_INCREF(v);
            int rc = pack(b, k, limit - 1) < 0 || pack(b, v, limit - 1) < 0 ? -1 : 0;
            Py_DECREF(k);
            Py_DECREF(v);
            if (rc < 0) return -1;
        }
        return 0;
    }
    /* Subclasses as msgpack-python packs them: through their items() or their iterator. */
    if (PyList_Check(o) || PyTuple_Check(o) || PyDict_Check(o)) {
        PyObject *seq = PyDict_Check(o) ? PyMapping_Items(o) : PySequence_List(o);
        if (seq == NULL) return -1;
        int rc = pack_items(b, seq, limit, PyDict_Check(o));
        Py_DECREF(seq);
        return rc;
    }
    PyErr_Format(PyExc_TypeError, "cannot pack %.100s", Py_TYPE(o)->tp_name);
    return -1;
}

/* An exact list or tuple as an array, or (pairs) a list of (key, value) tuples as a map. */
static int pack_items(Buf *b, PyObject *seq, int limit, int pairs) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (pairs ? pack_len(b, (size_t)n, 0x80, 16, 0, 0xde, 0xdf) : pack_len(b, (size_t)n, 0x90, 16, 0, 0xdc, 0xdd))
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i >= PySequence_Fast_GET_SIZE(seq)) {  /* a nested packing changed the list */
            PyErr_SetString(PyExc_RuntimeError, "list changed size while packing");
            return -1;
        }
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        Py_INCREF(item);
        int rc;
        if (!pairs)
            rc = pack(b, item, limit - 1);
        else if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "items() must give (key, value) pairs");
            rc = -1;
        } else
            rc = pack(b, PyTuple_GET_ITEM(item, 0), limit - 1) < 0 || pack(b, PyTuple_GET_ITEM(item, 1), limit - 1) < 0
                     ? -1 : 0;
        Py_DECREF(item);
        if (rc < 0) return -1;
    }
    return 0;
}

static PyObject *py_pack(PyObject *mod, PyObject *o) {
    Buf b = {0};
    PyObject *out = pack(&b, o, PACK_LIMIT) < 0 ? NULL : PyBytes_FromStringAndSize((const char *)b.p, (Py_ssize_t)b.n);
    PyMem_Free(b.p);
    return out;
}

/* ---- Frame: a received frame handed to Python, zero-copy --------------------------------------- */

typedef struct {
    PyObject_HEAD
    zmsg msg;
} Frame;

static PyTypeObject FrameType;

static void frame_dealloc(Frame *f) {
    Z.msg_close(&f->msg);  /* thread-safe in libzmq: a frame may die on any thread */
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static int frame_getbuffer(Frame *f, Py_buffer *view, int flags) {
    /* writable, like pyzmq's frames: the message is this process's own copy */
    return PyBuffer_FillInfo(view, (PyObject *)f, Z.msg_data(&f->msg), (Py_ssize_t)Z.msg_size(&f->msg), 0, flags);
}

static PyObject *frame_bytes(Frame *f, void *closure) {
    return PyBytes_FromStringAndSize(Z.msg_data(&f->msg), (Py_ssize_t)Z.msg_size(&f->msg));
}

static PyObject *frame_buffer(Frame *f, void *closure) { return PyMemoryView_FromObject((PyObject *)f); }

static Py_ssize_t frame_len(Frame *f) { return (Py_ssize_t)Z.msg_size(&f->msg); }

static PyBufferProcs frame_as_buffer = {(getbufferproc)frame_getbuffer, NULL};
static PySequenceMethods frame_as_sequence = {.sq_length = (lenfunc)frame_len};
static PyGetSetDef frame_getset[] = {
    {"bytes", (getter)frame_bytes, NULL, "the frame's bytes (a copy)", NULL},
    {"buffer", (getter)frame_buffer, NULL, "a memoryview of the frame (no copy)", NULL},
    {NULL},
};

static PyTypeObject FrameType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "services._lane.Frame",
    .tp_basicsize = sizeof(Frame),
    .tp_dealloc = (destructor)frame_dealloc,
    .tp_as_buffer = &frame_as_buffer,
    .tp_as_sequence = &frame_as_sequence,
    .tp_getset = frame_getset,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One received ZeroMQ frame; supports the buffer protocol (like zmq.Frame).",
};

/* ---- Outputs: a reply's tensor frames, prepared once and shared by every reply ------------------ */

typedef struct {
    PyObject_HEAD
    Py_ssize_t n;
    zmsg *msgs;
} Outputs;

static void outputs_dealloc(Outputs *o) {
    for (Py_ssize_t i = 0; i < o->n; i++) Z.msg_close(&o->msgs[i]);
    PyMem_Free(o->msgs);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static PyObject *outputs_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *items;
    if (!need_zmq() || !PyArg_ParseTuple(args, "O:Outputs", &items)) return NULL;
    PyObject *seq = PySequence_Fast(items, "Outputs() takes a sequence of buffers");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Outputs *o = (Outputs *)type->tp_alloc(type, 0);
    if (o == NULL || (o->msgs = PyMem_Calloc(n ? (size_t)n : 1, sizeof(zmsg))) == NULL) {
        Py_DECREF(seq);
        Py_XDECREF(o);
        return o ? PyErr_NoMemory() : NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer view;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &view, PyBUF_C_CONTIGUOUS) < 0) {
            Py_DECREF(seq);
            Py_DECREF(o);
            return NULL;
        }
        int rc = Z.msg_init_size(&o->msgs[i], (size_t)view.len);
        if (rc == 0) {
            if (view.len) memcpy(Z.msg_data(&o->msgs[i]), view.buf, (size_t)view.len);
            o->n = i + 1;
        }
        PyBuffer_Release(&view);
        if (rc != 0) {
            Py_DECREF(seq);
            Py_DECREF(o);
            return PyErr_NoMemory();
        }
    }
    Py_DECREF(seq);
    return (PyObject *)o;
}

static Py_ssize_t outputs_len(Outputs *o) { return o->n; }
static PySequenceMethods outputs_as_sequence = {.sq_length = (lenfunc)outputs_len};

static PyTypeObject OutputsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "services._lane.Outputs",
    .tp_basicsize = sizeof(Outputs),
    .tp_dealloc = (destructor)outputs_dealloc,
    .tp_as_sequence = &outputs_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = outputs_new,
    .tp_doc = "Outputs(buffers): a reply's tensor frames, copied once, then sent by reference.",
};

/* ---- Lane: drain() and send() on one socket ------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    void *sock;
    zmsg *parts;  /* one message's frames while it is read */
    Py_ssize_t cap;
    Buf header;   /* send()'s scratch header */
} Lane;

static void lane_dealloc(Lane *l) {
    PyMem_Free(l->parts);
    PyMem_Free(l->header.p);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static PyObject *lane_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    unsigned long long address;
    if (!need_zmq() || !PyArg_ParseTuple(args, "K:Lane", &address)) return NULL;
    if (address == 0) {
        PyErr_SetString(PyExc_ValueError, "Lane() needs an open socket's address (zmq.Socket.underlying)");
        return NULL;
    }
    Lane *l = (Lane *)type->tp_alloc(type, 0);
    if (l == NULL) return NULL;
    l->sock = (void *)(uintptr_t)address;
    l->cap = 8;
    if ((l->parts = PyMem_Calloc((size_t)l->cap, sizeof(zmsg))) == NULL) {
        Py_DECREF(l);
        return PyErr_NoMemory();
    }
    return (PyObject *)l;
}

static PyObject *SocketError;  /* an OSError with the socket's errno (ETERM, ENOTSOCK, ...) */

static PyObject *zmq_error(const char *what) {
    int e = Z.errno_();
    PyObject *msg = PyUnicode_FromFormat("%s: %s", what, Z.strerror(e));
    PyObject *args = msg ? Py_BuildValue("(iO)", e, msg) : NULL;
    if (args) PyErr_SetObject(SocketError, args);
    Py_XDECREF(args);
    Py_XDECREF(msg);
    return NULL;
}

static void close_parts(Lane *l, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) Z.msg_close(&l->parts[i]);
}

/* Room for `need` frames; moves the first `keep` (the frames read so far) when it grows. */
static int grow_parts(Lane *l, Py_ssize_t keep, Py_ssize_t need) {
    if (need <= l->cap) return 0;
    Py_ssize_t cap = l->cap;
    while (cap < need) cap *= 2;
    zmsg *p = PyMem_Calloc((size_t)cap, sizeof(zmsg));
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < keep; i++) {
        Z.msg_init(&p[i]);
        Z.msg_move(&p[i], &l->parts[i]);
        Z.msg_close(&l->parts[i]);
    }
    PyMem_Free(l->parts);
    l->parts = p;
    l->cap = cap;
    return 0;
}

/* Reads one whole message into l->parts: its frame count, 0 when none is waiting, -1 on error. */
static Py_ssize_t recv_message(Lane *l) {
    Py_ssize_t n = 0;
    do {
        if (grow_parts(l, n, n + 1) < 0) {
            close_parts(l, n);
            return -1;
        }
        Z.msg_init(&l->parts[n]);
        if (Z.msg_recv(&l->parts[n], l->sock, ZMQ_DONTWAIT) < 0) {
            int e = Z.errno_();
            Z.msg_close(&l->parts[n]);
            if (n == 0 && (e == EAGAIN || e == EINTR)) return 0;
            close_parts(l, n);
            zmq_error("receiving a message");
            return -1;
        }
        n++;
    } while (Z.msg_more(&l->parts[n - 1]));
    return n;
}

#define ID_AT 10  /* encode() writes {"v": 1, "k": kind, "id": ...: the id's first byte is here */
static const unsigned char HEAD[] = {0x86, 0xa1, 'v', 0x01, 0xa1, 'k'};

/* The route of a message in l->parts, if any (borrowed), with its request id; NULL without an
 * error when it has none. Keyed as protocol._repeat_key keys a header: its kind byte and all that
 * follows the id. The route is (callable, (size of each tensor frame, ...)). */
static PyObject *find_route(Lane *l, Py_ssize_t n, PyObject *routes, long long max_total,
                            long long max_header, uint64_t *rid) {
    if (n < 2 || PyDict_GET_SIZE(routes) == 0) return NULL;
    const unsigned char *h = Z.msg_data(&l->parts[1]);
    size_t hn = Z.msg_size(&l->parts[1]);
    if (hn <= ID_AT || (long long)hn > max_header || memcmp(h, HEAD, sizeof HEAD) != 0 || h[6] >= 0x80 ||
        memcmp(h + 7, "\xa2id", 3) != 0)
        return NULL;
    unsigned char tag = h[ID_AT];
    int width = tag < 0x80 ? 0 : tag == 0xcc ? 1 : tag == 0xcd ? 2 : tag == 0xce ? 4 : tag == 0xcf ? 8 : -1;
    size_t end = ID_AT + 1 + (size_t)width;
    if (width < 0 || end > hn) return NULL;
    uint64_t v = width ? 0 : tag;
    for (size_t i = ID_AT + 1; i < end; i++) v = v << 8 | h[i];
    if (v >> 63) return NULL;  /* the full decode refuses it, with the reason */
    PyObject *key = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(1 + hn - end));
    if (key == NULL) return NULL;
    PyBytes_AS_STRING(key)[0] = (char)h[6];
    memcpy(PyBytes_AS_STRING(key) + 1, h + end, hn - end);
    PyObject *route = PyDict_GetItemWithError(routes, key);
    Py_DECREF(key);
    if (route == NULL || !PyTuple_Check(route) || PyTuple_GET_SIZE(route) != 2) return NULL;
    PyObject *sizes = PyTuple_GET_ITEM(route, 1);
    if (!PyTuple_Check(sizes) || PyTuple_GET_SIZE(sizes) != n - 2) return NULL;
    long long total = (long long)hn;
    for (Py_ssize_t i = 0; i < n - 2; i++) {
        PyObject *want = PyTuple_GET_ITEM(sizes, i);
        size_t got = Z.msg_size(&l->parts[i + 2]);
        if (!PyLong_CheckExact(want) || PyLong_AsSsize_t(want) != (Py_ssize_t)got) {
            PyErr_Clear();
            return NULL;
        }
        total += (long long)got;
    }
    if (total > max_total) return NULL;
    *rid = v;
    return PyTuple_GET_ITEM(route, 0);  /* borrowed: the caller takes a reference before any call */
}

/* Whether the earliest of the loop's timers (a heap of (when_ns, seq, fn)) is due. */
static int timer_due(PyObject *timers) {
    if (PyList_GET_SIZE(timers) == 0) return 0;
    PyObject *first = PyList_GET_ITEM(timers, 0);
    if (!PyTuple_Check(first) || PyTuple_GET_SIZE(first) < 1) return 0;
    long long when = PyLong_AsLongLong(PyTuple_GET_ITEM(first, 0));
    if (when == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return when <= now_ns();
}

static PyObject *lane_drain(Lane *l, PyObject *args) {
    int budget;
    long long max_total, max_header;
    PyObject *timers, *routes, *other;
    if (!PyArg_ParseTuple(args, "iO!O!LLO:drain", &budget, &PyList_Type, &timers, &PyDict_Type, &routes,
                          &max_total, &max_header, &other))
        return NULL;
    for (int handled = 0; handled < budget; handled++) {
        Py_ssize_t n = recv_message(l);
        if (n <= 0) {
            if (n == 0) Py_RETURN_FALSE;
            return NULL;
        }
        long long received = now_ns();
        uint64_t rid = 0;
        PyObject *fn = find_route(l, n, routes, max_total, max_header, &rid);
        PyObject *result;
        if (fn != NULL) {
            PyObject *call[3] = {
                PyLong_FromUnsignedLongLong(rid),
                PyBytes_FromStringAndSize(Z.msg_data(&l->parts[0]), (Py_ssize_t)Z.msg_size(&l->parts[0])),
                PyLong_FromLongLong(received),
            };
            close_parts(l, n);
            Py_INCREF(fn);  /* the call may drop the route from the table */
            result = call[0] && call[1] && call[2] ? PyObject_Vectorcall(fn, call, 3, NULL) : NULL;
            Py_DECREF(fn);
            for (int i = 0; i < 3; i++) Py_XDECREF(call[i]);
        } else {
            if (PyErr_Occurred()) {
                close_parts(l, n);
                return NULL;
            }
            PyObject *frames = PyList_New(n);
            for (Py_ssize_t i = 0; frames != NULL && i < n; i++) {
                Frame *f = PyObject_New(Frame, &FrameType);
                if (f == NULL) {
                    Py_CLEAR(frames);
                    break;
                }
                Z.msg_init(&f->msg);
                Z.msg_move(&f->msg, &l->parts[i]);
                PyList_SET_ITEM(frames, i, (PyObject *)f);
            }
            close_parts(l, n);  /* empty after the moves, but for a failed allocation */
            PyObject *t = frames ? PyLong_FromLongLong(received) : NULL;
            result = t ? PyObject_CallFunctionObjArgs(other, frames, t, NULL) : NULL;
            Py_XDECREF(t);
            Py_XDECREF(frames);
        }
        if (result == NULL) return NULL;
        Py_DECREF(result);
        if (timer_due(timers)) Py_RETURN_TRUE;
    }
    Py_RETURN_TRUE;
}

static int init_bytes(zmsg *m, const void *p, size_t n) {
    if (Z.msg_init_size(m, n) != 0) return -1;
    if (n) memcpy(Z.msg_data(m), p, n);
    return 0;
}

static PyObject *lane_send(Lane *l, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "send(peer, head, id, tail, body, outputs)");
        return NULL;
    }
    PyObject *peer = args[0], *head = args[1], *tail = args[3], *outputs = args[5];
    if (!PyBytes_Check(peer) || !PyBytes_Check(head) || !PyBytes_Check(tail) || !PyLong_Check(args[2]) ||
        (outputs != Py_None && !PyObject_TypeCheck(outputs, &OutputsType))) {
        PyErr_SetString(PyExc_TypeError, "send(peer: bytes, head: bytes, id: int, tail: bytes, body, "
                                         "outputs: Outputs | None)");
        return NULL;
    }
    unsigned long long rid = PyLong_AsUnsignedLongLong(args[2]);
    if (rid == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    Buf *b = &l->header;
    b->n = 0;
    if (buf_put(b, PyBytes_AS_STRING(head), (size_t)PyBytes_GET_SIZE(head)) < 0 || pack_uint(b, rid) < 0 ||
        buf_put(b, PyBytes_AS_STRING(tail), (size_t)PyBytes_GET_SIZE(tail)) < 0 || pack(b, args[4], PACK_LIMIT) < 0)
        return NULL;
    Outputs *o = outputs == Py_None ? NULL : (Outputs *)outputs;
    Py_ssize_t n = 2 + (o ? o->n : 0), ready = 0;
    /* Every frame is made before the first is sent, so a failure cannot leave a message half sent. */
    if (grow_parts(l, 0, n) < 0) return NULL;
    int ok = init_bytes(&l->parts[0], PyBytes_AS_STRING(peer), (size_t)PyBytes_GET_SIZE(peer)) == 0;
    ready += ok;
    ok = ok && init_bytes(&l->parts[1], b->p, b->n) == 0;
    ready += ok;
    for (Py_ssize_t i = 2; ok && i < n; i++) {
        Z.msg_init(&l->parts[i]);
        ready++;
        ok = Z.msg_copy(&l->parts[i], &o->msgs[i - 2]) == 0;
    }
    if (!ok) {
        close_parts(l, ready);
        return PyErr_NoMemory();
    }
    /* A ROUTER refuses a message at its first frame (the peer is gone, or its queue is full): then
     * nothing of it was sent, and the caller counts it undeliverable. */
    for (Py_ssize_t i = 0; i < n; i++) {
        if (Z.msg_send(&l->parts[i], l->sock, ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0)) < 0) {
            close_parts(l, n);  /* libzmq empties each frame it has sent: closing those is harmless */
            Py_RETURN_FALSE;
        }
    }
    Py_RETURN_TRUE;
}

static PyMethodDef lane_methods[] = {
    {"drain", (PyCFunction)lane_drain, METH_VARARGS,
     "drain(budget, timers, routes, max_message_bytes, max_header_bytes, other) -> bool\n\n"
     "Handle up to budget waiting messages: a routed request calls its route's callable with (id, peer,\n"
     "received_ns), any other message calls other(frames, received_ns). Stops early when the first of\n"
     "timers is due. True when more may be waiting."},
    {"send", (PyCFunction)(void (*)(void))lane_send, METH_FASTCALL,
     "send(peer, head, id, tail, body, outputs) -> bool: send [peer, head+id+tail+pack(body), *outputs];\n"
     "False when the socket refused it (the peer is gone or its queue is full)."},
    {NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "services._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_dealloc = (destructor)lane_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_methods = lane_methods,
    .tp_new = lane_new,
    .tp_doc = "Lane(socket_address): drain() and send() on a socket, from the thread that owns it.",
};

static PyMethodDef methods[] = {
    {"bind", py_bind, METH_O, "bind(path): resolve libzmq through the loaded library at path (pyzmq's backend); its version"},
    {"pack", py_pack, METH_O, "pack(obj) -> bytes: msgpack, as packb(obj, use_bin_type=True) writes it"},
    {NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lane", "The serving loop's compiled path (see lane.py).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__lane(void) {
    if (PyType_Ready(&FrameType) < 0 || PyType_Ready(&OutputsType) < 0 || PyType_Ready(&LaneType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    SocketError = PyErr_NewExceptionWithDoc("services._lane.SocketError",
                                            "libzmq refused to receive on the socket (errno: why).", PyExc_OSError, NULL);
    if (SocketError == NULL || PyModule_AddObjectRef(m, "SocketError", SocketError) < 0 ||
        PyModule_AddObjectRef(m, "Frame", (PyObject *)&FrameType) < 0 ||
        PyModule_AddObjectRef(m, "Outputs", (PyObject *)&OutputsType) < 0 ||
        PyModule_AddObjectRef(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
