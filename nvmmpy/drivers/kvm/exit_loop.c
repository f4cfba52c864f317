/* The kvm vCPU's compiled run loop, a CPython extension (see exit_loop.py for why and how).
 *
 * run(state, on_io, on_mem) calls KVM_RUN in a loop with the GIL released around the ioctl only.
 * A single-element port I/O exit calls on_io(port, is_in, data) and an MMIO exit of 1-8 bytes
 * on_mem(gpa, is_write, data), where data is a writable memoryview of the element in kvm_run
 * (made once by Python); the loop goes on unless the handler returns a true value. It returns
 * YIELD then, the KVM exit reason of any other exit (Python decodes it as KvmVCpu.run() does),
 * -errno if KVM_RUN failed, or raises what a handler raised. Field offsets come from Python
 * (cffi's view of the kvm ABI), so no kernel header is needed here.
 *
 * Built with -DNVMMPY_INIT=PyInit_<module name> -DNVMMPY_NAME="<module name>".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <time.h>

#define YIELD (-1000000)

enum { OFF_REASON, OFF_IO_DIRECTION, OFF_IO_SIZE, OFF_IO_PORT, OFF_IO_COUNT, OFF_IO_DATA_OFFSET,
       OFF_MMIO_ADDR, OFF_MMIO_LEN, OFF_MMIO_IS_WRITE, N_OFFSETS };

struct loop {
    int fd;
    unsigned long run_request;        /* KVM_RUN */
    unsigned char *run;               /* the vCPU's kvm_run mapping */
    uint32_t exit_io, exit_mmio;      /* KVM_EXIT_IO, KVM_EXIT_MMIO */
    uint32_t off[N_OFFSETS];
    uint64_t pio_offset;              /* where KVM puts a single element's data */
    PyObject *pio_views, *mmio_views; /* tuples indexed by size */
    uint64_t io_exits, mmio_exits;    /* handled here, for the VMM's account */
    uint64_t guest_ns;                /* time inside KVM_RUN */
    PyObject *port_obj, *gpa_obj;     /* the last port and address as ints: a guest's exit storm */
    uint64_t port, gpa;               /* repeats them, and reusing them allocates nothing */
};

static const char CAPSULE[] = "nvmmpy.kvm_exit_loop";

static void loop_free(PyObject *capsule)
{
    struct loop *l = PyCapsule_GetPointer(capsule, CAPSULE);
    if (l) {
        Py_XDECREF(l->pio_views);
        Py_XDECREF(l->mmio_views);
        Py_XDECREF(l->port_obj);
        Py_XDECREF(l->gpa_obj);
        PyMem_Free(l);
    }
}

/* new(fd, run_request, run_address, exit_io, exit_mmio, offsets, pio_offset, pio_views, mmio_views) */
static PyObject *loop_new(PyObject *self, PyObject *args)
{
    int fd;
    unsigned long run_request;
    unsigned long long run_address, pio_offset;
    unsigned int exit_io, exit_mmio;
    PyObject *offsets, *pio, *mmio;
    if (!PyArg_ParseTuple(args, "ikKIIO!KO!O!", &fd, &run_request, &run_address, &exit_io, &exit_mmio,
                          &PyTuple_Type, &offsets, &pio_offset, &PyTuple_Type, &pio, &PyTuple_Type, &mmio))
        return NULL;
    if (PyTuple_GET_SIZE(offsets) != N_OFFSETS || PyTuple_GET_SIZE(pio) < 5 || PyTuple_GET_SIZE(mmio) < 9) {
        PyErr_SetString(PyExc_ValueError, "exit_loop.new: wrong number of offsets or views");
        return NULL;
    }
    struct loop *l = PyMem_Calloc(1, sizeof *l);
    if (!l)
        return PyErr_NoMemory();
    for (int i = 0; i < N_OFFSETS; i++) {
        l->off[i] = (uint32_t)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(offsets, i));
        if (PyErr_Occurred()) {
            PyMem_Free(l);
            return NULL;
        }
    }
    l->fd = fd;
    l->run_request = run_request;
    l->run = (unsigned char *)(uintptr_t)run_address;
    l->exit_io = exit_io;
    l->exit_mmio = exit_mmio;
    l->pio_offset = pio_offset;
    Py_INCREF(pio);
    Py_INCREF(mmio);
    l->pio_views = pio;
    l->mmio_views = mmio;
    PyObject *capsule = PyCapsule_New(l, CAPSULE, loop_free);
    if (!capsule) {
        Py_DECREF(pio);
        Py_DECREF(mmio);
        PyMem_Free(l);
    }
    return capsule;
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* *obj as an int for `value`, made anew only when the value changed; NULL on failure. */
static PyObject *as_int(PyObject **obj, uint64_t *cached, uint64_t value)
{
    if (*obj == NULL || *cached != value) {
        PyObject *o = PyLong_FromUnsignedLongLong(value);
        if (!o)
            return NULL;
        PyObject *old = *obj;
        *obj = o;
        *cached = value;
        Py_XDECREF(old);
    }
    return *obj;
}

/* Call handler(addr, flag, view); 1 to return to Python, 0 to go on, -1 on an exception. */
static int call(PyObject *handler, PyObject *addr, int flag, PyObject *view)
{
    if (!addr)
        return -1;
    PyObject *args[3] = {addr, flag ? Py_True : Py_False, view};
    PyObject *res = PyObject_Vectorcall(handler, args, 3, NULL);
    if (!res)
        return -1;
    int y = res == Py_False || res == Py_None ? 0 : res == Py_True ? 1 : PyObject_IsTrue(res);
    Py_DECREF(res);
    return y;
}

static PyObject *loop_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "exit_loop.run(state, on_io, on_mem)");
        return NULL;
    }
    struct loop *l = PyCapsule_GetPointer(args[0], CAPSULE);
    if (!l)
        return NULL;
    PyObject *on_io = args[1], *on_mem = args[2];
    unsigned char *run = l->run;
    const uint32_t *off = l->off;
    for (;;) {
        int r, err;
        uint64_t t0 = now_ns();
        Py_BEGIN_ALLOW_THREADS
        r = ioctl(l->fd, l->run_request, 0);
        err = errno;
        Py_END_ALLOW_THREADS
        l->guest_ns += now_ns() - t0;
        if (r < 0)
            return PyLong_FromLong(-err);
        uint32_t reason = *(volatile uint32_t *)(run + off[OFF_REASON]);
        int y;
        if (reason == l->exit_io) {
            uint8_t size = run[off[OFF_IO_SIZE]];
            if (*(uint32_t *)(run + off[OFF_IO_COUNT]) != 1 || size > 4 ||
                *(uint64_t *)(run + off[OFF_IO_DATA_OFFSET]) != l->pio_offset)
                return PyLong_FromUnsignedLong(reason);     /* string I/O: the Python path */
            l->io_exits++;
            y = call(on_io, as_int(&l->port_obj, &l->port, *(uint16_t *)(run + off[OFF_IO_PORT])),
                     run[off[OFF_IO_DIRECTION]] == 0,        /* KVM_EXIT_IO_IN */
                     PyTuple_GET_ITEM(l->pio_views, size));
        } else if (reason == l->exit_mmio) {
            uint32_t len = *(uint32_t *)(run + off[OFF_MMIO_LEN]);
            if (len == 0 || len > 8)
                return PyLong_FromUnsignedLong(reason);     /* refused by the Python path, with its message */
            l->mmio_exits++;
            y = call(on_mem, as_int(&l->gpa_obj, &l->gpa, *(uint64_t *)(run + off[OFF_MMIO_ADDR])),
                     run[off[OFF_MMIO_IS_WRITE]] != 0, PyTuple_GET_ITEM(l->mmio_views, len));
        } else {
            return PyLong_FromUnsignedLong(reason);
        }
        if (y < 0)
            return NULL;
        if (y)
            return PyLong_FromLong(YIELD);
    }
}

static PyObject *loop_account(PyObject *self, PyObject *capsule)
{
    struct loop *l = PyCapsule_GetPointer(capsule, CAPSULE);
    if (!l)
        return NULL;
    return Py_BuildValue("KKK", (unsigned long long)l->io_exits, (unsigned long long)l->mmio_exits,
                         (unsigned long long)l->guest_ns);
}

static PyMethodDef methods[] = {
    {"new", loop_new, METH_VARARGS, "The loop state for one vCPU (a capsule)."},
    {"run", (PyCFunction)(void (*)(void))loop_run, METH_FASTCALL, "Run until a handler yields or another exit."},
    {"account", loop_account, METH_O, "(port exits, MMIO exits, ns in KVM_RUN) handled so far."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, NVMMPY_NAME, NULL, -1, methods};

PyMODINIT_FUNC NVMMPY_INIT(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "YIELD", YIELD) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
