/*
 * kvm_exit_loop: minimal C baseline for the per-exit cost of Linux /dev/kvm.
 *
 * Usage: kvm_exit_loop SNAPSHOT_DIR EXITS
 *
 * SNAPSHOT_DIR holds mem.bin (raw guest RAM loaded at GPA 0), regs.bin
 * (struct kvm_regs) and sregs.bin (struct kvm_sregs).  The guest is run with
 * KVM_RUN; port I/O and MMIO exits are answered with zeros (reads) or
 * consumed (writes).  After a warm-up of min(1000, EXITS/10) exits, exactly
 * EXITS exits are timed (fewer if the guest halts).  One JSON line is
 * printed on stdout.
 *
 * Build: gcc -O2 -Wall -Wextra -o kvm_exit_loop kvm_exit_loop.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#define PAGE_SIZE_4K 4096UL

static volatile uint8_t sink;

static void die_input(const char *fmt, const char *arg)
{
    fprintf(stderr, "kvm_exit_loop: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(2);
}

static void die_sys(const char *what)
{
    fprintf(stderr, "kvm_exit_loop: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Open dir/name (its full name into path), a regular file; its size into st. */
static int open_input(const char *dir, const char *name, char path[PATH_MAX], struct stat *st)
{
    int fd;

    if (snprintf(path, PATH_MAX, "%s/%s", dir, name) >= PATH_MAX)
        die_input("path too long: %s", name);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "kvm_exit_loop: cannot open %s: %s\n", path, strerror(errno));
        exit(2);
    }
    if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode))
        die_input("not a regular file: %s", path);
    return fd;
}

/* Read len bytes of fd (the file at path) into buf, then close it. */
static void read_all(int fd, void *buf, size_t len, const char *path)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = read(fd, (char *)buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die_input("short read from %s", path);
        done += (size_t)n;
    }
    close(fd);
}

/* Read the whole of dir/name into buf; the file must be exactly len bytes. */
static void read_exact_file(const char *dir, const char *name, void *buf, size_t len)
{
    char path[PATH_MAX];
    struct stat st;
    int fd = open_input(dir, name, path, &st);

    if ((uint64_t)st.st_size != (uint64_t)len) {
        fprintf(stderr, "kvm_exit_loop: %s has size %lld, expected %zu\n",
                path, (long long)st.st_size, len);
        exit(2);
    }
    read_all(fd, buf, len, path);
}

/* Map RAM for mem.bin (size rounded up to 4 KiB) and copy the file in. */
static void *load_mem(const char *dir, size_t *ram_size)
{
    char path[PATH_MAX];
    struct stat st;
    int fd = open_input(dir, "mem.bin", path, &st);
    size_t len, size;
    void *mem;

    if (st.st_size <= 0)
        die_input("empty guest memory image: %s", path);
    len = (size_t)st.st_size;
    size = (len + PAGE_SIZE_4K - 1) & ~(PAGE_SIZE_4K - 1);
    mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED)
        die_sys("mmap guest memory");
    read_all(fd, mem, len, path);
    *ram_size = size;
    return mem;
}

static int parse_exits(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v == 0)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static struct kvm_cpuid2 *get_supported_cpuid(int kvm)
{
    uint32_t nent = 256;

    for (;;) {
        struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + nent * sizeof(c->entries[0]));
        if (!c) {
            errno = ENOMEM;
            die_sys("calloc cpuid");
        }
        c->nent = nent;
        if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) == 0)
            return c;
        free(c);
        if (errno != E2BIG || nent >= (1u << 16))
            die_sys("KVM_GET_SUPPORTED_CPUID");
        nent *= 2;
    }
}

enum { RUN_EXIT, RUN_HLT };

/* Run until one counted exit (I/O or MMIO) or HLT. */
static int run_one(int vcpu, struct kvm_run *run, uint64_t *io, uint64_t *mmio)
{
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            die_sys("KVM_RUN");
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            size_t n = (size_t)run->io.size * run->io.count;
            if (run->io.direction == KVM_EXIT_IO_IN)
                memset(data, 0, n);
            else if (n)
                sink ^= data[0];
            (*io)++;
            return RUN_EXIT;
        }
        case KVM_EXIT_MMIO: {
            uint32_t len = run->mmio.len;
            if (len > sizeof(run->mmio.data))
                len = sizeof(run->mmio.data);
            if (run->mmio.is_write) {
                for (uint32_t i = 0; i < len; i++)
                    sink ^= run->mmio.data[i];
            } else {
                memset(run->mmio.data, 0, len);
            }
            (*mmio)++;
            return RUN_EXIT;
        }
        case KVM_EXIT_HLT:
            return RUN_HLT;
        default:
            fprintf(stderr, "unexpected exit reason %u\n", run->exit_reason);
            exit(1);
        }
    }
}

int main(int argc, char **argv)
{
    const char *dir;
    uint64_t exits, warmup, done = 0, io = 0, mmio = 0, i;
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_userspace_memory_region region;
    struct kvm_cpuid2 *cpuid;
    struct kvm_run *run;
    struct timespec t0, t1;
    struct stat st;
    size_t ram_size;
    void *mem;
    int kvm, vm, vcpu, halted = 0;
    long mmap_size;
    double secs;

    if (argc != 3) {
        fprintf(stderr, "usage: %s SNAPSHOT_DIR EXITS\n", argc > 0 ? argv[0] : "kvm_exit_loop");
        return 2;
    }
    dir = argv[1];
    if (parse_exits(argv[2], &exits) < 0)
        die_input("EXITS must be a positive integer, got '%s'", argv[2]);
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        die_input("not a directory: %s", dir);

    /* Validate and load all inputs before touching KVM. */
    read_exact_file(dir, "regs.bin", &regs, sizeof(regs));
    read_exact_file(dir, "sregs.bin", &sregs, sizeof(sregs));
    mem = load_mem(dir, &ram_size);

    kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die_sys("open /dev/kvm");
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
        fprintf(stderr, "kvm_exit_loop: unexpected KVM API version\n");
        return 1;
    }
    vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die_sys("KVM_CREATE_VM");
    /* Optional on most hosts; ignore failure. */
    (void)ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL);

    memset(&region, 0, sizeof(region));
    region.slot = 0;
    region.guest_phys_addr = 0;
    region.memory_size = ram_size;
    region.userspace_addr = (uint64_t)(uintptr_t)mem;
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die_sys("KVM_SET_USER_MEMORY_REGION");

    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die_sys("KVM_CREATE_VCPU");
    mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size < (long)sizeof(*run))
        die_sys("KVM_GET_VCPU_MMAP_SIZE");
    run = mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die_sys("mmap kvm_run");

    cpuid = get_supported_cpuid(kvm);
    if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0)
        die_sys("KVM_SET_CPUID2");
    free(cpuid);

    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        die_sys("KVM_SET_SREGS");
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        die_sys("KVM_SET_REGS");

    /* Warm-up (untimed). */
    warmup = exits / 10 < 1000 ? exits / 10 : 1000;
    for (i = 0; i < warmup; i++) {
        if (run_one(vcpu, run, &io, &mmio) == RUN_HLT) {
            halted = 1;
            break;
        }
    }
    io = mmio = 0;

    /* Timed section. */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (!halted) {
        for (done = 0; done < exits; ) {
            if (run_one(vcpu, run, &io, &mmio) == RUN_HLT) {
                halted = 1;
                break;
            }
            done++;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);

    secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("{\"exits\": %llu, \"io_exits\": %llu, \"mmio_exits\": %llu, "
           "\"seconds\": %.9f, \"ns_per_exit\": %.3f, \"halted\": %s}\n",
           (unsigned long long)done, (unsigned long long)io,
           (unsigned long long)mmio, secs,
           done ? secs * 1e9 / (double)done : 0.0,
           halted ? "true" : "false");
    fflush(stdout);

    munmap(run, (size_t)mmap_size);
    munmap(mem, ram_size);
    close(vcpu);
    close(vm);
    close(kvm);
    return 0;
}
