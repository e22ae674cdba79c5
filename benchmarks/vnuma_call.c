/*
 * XENMEM_get_vnumainfo straight through /dev/xen/privcmd, N times, timed: the C side of
 * benchmarks/vnuma_call.py (issue 18 item 3).
 *
 *     gcc -O2 -Wall -o vnuma_call vnuma_call.c && ./vnuma_call -n 1000
 *
 * libc only (the guest image has gcc but not libxen-dev): the structs and numbers below are
 * Xen's (public/memory.h, xen.h, Linux's uapi xen/privcmd.h), checked against /usr/include/xen by
 * tests/test_bench_vnuma_call.py. Each call does what the agent's guestagent.xen.vnuma
 * get_vnumainfo does through its C doorway (csrc/xenc.c's ga_vnuma_get, the whole protocol in
 * one call): a one-page hypercall buffer for the zero-capacity query (-ENOBUFS and the
 * counts), freed; a second buffer holding the info, the distances, the vCPU map and the ranges at
 * the same offsets, the real call, the distances and the vCPU map copied out (the agent copies
 * the ranges too: 48 bytes here), freed. Buffers come from /dev/xen/hypercall when it opens,
 * else locked anonymous pages kept out of children and touched page by page; neither side
 * zeroes them again (the kernel hands out zero-filled pages: anonymous memory, and privcmd-buf's
 * __GFP_ZERO pages).
 *
 * Output, one "key value" a line: calls, seconds_per_call (CLOCK_MONOTONIC, the N calls over N),
 * cpu_seconds_per_call (CLOCK_PROCESS_CPUTIME_ID, the same way), nr_vnodes, nr_vcpus,
 * nr_vmemranges, vcpu_to_vnode (comma-separated), distances (row-major, comma-separated), buffer
 * (device or locked). No privcmd, no vNUMA for this domain or a Xen without the hypercall: one
 * line on stderr, exit 2. Any other failure: one line, exit 1.
 * Options: -n CALLS, -d PRIVCMD_DEVICE (default: the two usual paths), -b BUFFER_DEVICE
 * (default /dev/xen/hypercall).
 *
 * Compiled with -DVNUMA_CALL_FAKE_XEN -shared -fPIC this file is instead a fake Xen for native
 * runs without a hypervisor (vnuma_call.py --fake-xen): an LD_PRELOAD library whose syscall()
 * answers IOCTL_PRIVCMD_HYPERCALL for XENMEM_get_vnumainfo as Xen 4.17 does, in-process, for
 * the testbed's guest (2 vnodes, vCPUs 0-1 and 2-3, distances 10/20, 512 MiB each), and passes
 * every other syscall on. The agent's doorway (csrc/xenc.c) and this program both issue the
 * ioctl through syscall(), so both meet the same fake: what is timed is everything but Xen.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- Xen's ABI, x86_64 (checked against /usr/include/xen by the tests) ---- */
#define VC_IOCTL_PRIVCMD_HYPERCALL 0x305000UL /* _IOC(_IOC_NONE, 'P', 0, 48) */
#define VC_HYPERVISOR_memory_op 12
#define VC_XENMEM_get_vnumainfo 26
#define VC_DOMID_SELF 0x7FF0
#define VC_PAGE_SIZE 4096

struct vc_privcmd_hypercall {
    uint64_t op;
    uint64_t arg[5];
};

struct vc_xen_vmemrange {
    uint64_t start;
    uint64_t end;
    uint32_t flags;
    uint32_t nid;
};

struct vc_xen_vnuma_topology_info {
    uint16_t domid;
    uint16_t pad;
    uint32_t nr_vnodes;
    uint32_t nr_vcpus;
    uint32_t nr_vmemranges;
    uint64_t vdistance;     /* handle: uint32_t[nr_vnodes * nr_vnodes] */
    uint64_t vcpu_to_vnode; /* handle: uint32_t[nr_vcpus] */
    uint64_t vmemrange;     /* handle: struct vc_xen_vmemrange[nr_vmemranges] */
};

#if defined(VNUMA_CALL_FAKE_XEN)
#include <dlfcn.h>
#include <stdarg.h>

#define VC_HYPERVISOR_xen_version 17

static const uint32_t FAKE_DISTANCES[] = { 10, 20, 20, 10 };
static const uint32_t FAKE_VCPU_TO_VNODE[] = { 0, 0, 1, 1 };
static const struct vc_xen_vmemrange FAKE_RANGES[] = {
    { 0, 512ULL << 20, 0, 0 },
    { 512ULL << 20, 1024ULL << 20, 0, 1 },
};
#define FAKE_COUNT(a) ((uint32_t)(sizeof(a) / sizeof((a)[0])))

/* xen/common/memory.c's XENMEM_get_vnumainfo on DOMID_SELF: -ENOBUFS with the counts when a
 * capacity is short, else the arrays and the counts. */
static long fake_get_vnumainfo(struct vc_xen_vnuma_topology_info *info)
{
    uint32_t nodes = 2, vcpus = FAKE_COUNT(FAKE_VCPU_TO_VNODE), ranges = FAKE_COUNT(FAKE_RANGES);

    if (info->pad != 0)
        return -EINVAL;
    if (info->domid != VC_DOMID_SELF)
        return -ESRCH;
    if (info->nr_vnodes < nodes || info->nr_vcpus < vcpus || info->nr_vmemranges < ranges) {
        info->nr_vnodes = nodes;
        info->nr_vcpus = vcpus;
        info->nr_vmemranges = ranges;
        return -ENOBUFS;
    }
    memcpy((void *)(uintptr_t)info->vdistance, FAKE_DISTANCES, sizeof(FAKE_DISTANCES));
    memcpy((void *)(uintptr_t)info->vcpu_to_vnode, FAKE_VCPU_TO_VNODE, sizeof(FAKE_VCPU_TO_VNODE));
    memcpy((void *)(uintptr_t)info->vmemrange, FAKE_RANGES, sizeof(FAKE_RANGES));
    info->nr_vnodes = nodes;
    info->nr_vcpus = vcpus;
    info->nr_vmemranges = ranges;
    return 0;
}

static long fake_hypercall(const struct vc_privcmd_hypercall *call)
{
    if (call->op == VC_HYPERVISOR_xen_version)
        return (4 << 16) | 17;
    if (call->op == VC_HYPERVISOR_memory_op && call->arg[0] == VC_XENMEM_get_vnumainfo)
        return fake_get_vnumainfo((struct vc_xen_vnuma_topology_info *)(uintptr_t)call->arg[1]);
    return -ENOSYS;
}

long syscall(long number, ...)
{
    static long (*next)(long, ...);
    long a[6], rc;
    va_list ap;

    va_start(ap, number);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_ioctl && (unsigned long)a[1] == VC_IOCTL_PRIVCMD_HYPERCALL) {
        rc = fake_hypercall((const struct vc_privcmd_hypercall *)(uintptr_t)a[2]);
        if (rc < 0) {
            errno = (int)-rc;
            return -1;
        }
        return rc;
    }
    if (next == NULL)
        next = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return next(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

#elif !defined(VNUMA_CALL_ABI_ONLY)

/* The agent's bounds (guestagent/xen/vnuma.py) and its retry count. */
#define MAX_VNODES 64
#define MAX_VCPUS 4096
#define MAX_VMEMRANGES 1024
#define MAX_ATTEMPTS 5

#define EXIT_MISSING 2

static const char *PRIVCMD_PATHS[] = { "/dev/xen/privcmd", "/proc/xen/privcmd" };

struct vc_buffer {
    void *addr;
    size_t npages;
};

struct vc_topology {
    uint32_t nr_vnodes, nr_vcpus, nr_vmemranges;
    uint32_t vcpu_to_vnode[MAX_VCPUS];
    uint32_t distances[MAX_VNODES * MAX_VNODES];
};

/* The hypercall as csrc/xenc.c's ga_hypercall issues it: 0 or a negative errno. */
static long hypercall(int fd, uint64_t op, uint64_t a0, uint64_t a1)
{
    struct vc_privcmd_hypercall call = { op, { a0, a1, 0, 0, 0 } };
    long rc;

    do {
        rc = syscall(SYS_ioctl, fd, VC_IOCTL_PRIVCMD_HYPERCALL, &call);
    } while (rc < 0 && errno == EINTR);
    return rc < 0 ? -errno : rc;
}

/* csrc/xenc.c's ga_buffer_alloc, as Privcmd.buffer calls it (the pages come zero-filled). */
static int buffer_alloc(int buf_fd, size_t nbytes, struct vc_buffer *buf)
{
    size_t npages = nbytes == 0 ? 1 : (nbytes + VC_PAGE_SIZE - 1) / VC_PAGE_SIZE;
    size_t size = npages * VC_PAGE_SIZE;
    void *p;

    if (buf_fd >= 0) {
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, buf_fd, 0);
        if (p == MAP_FAILED)
            return -errno;
    } else {
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED,
                 -1, 0);
        if (p == MAP_FAILED)
            return -errno;
        if (madvise(p, size, MADV_DONTFORK) < 0) {
            int err = errno;

            munmap(p, size);
            return -err;
        }
        for (size_t i = 0; i < npages; i++)
            ((volatile uint8_t *)p)[i * VC_PAGE_SIZE] = 0;
    }
    buf->addr = p;
    buf->npages = npages;
    return 0;
}

static void buffer_free(int buf_fd, struct vc_buffer *buf)
{
    size_t size = buf->npages * VC_PAGE_SIZE;

    if (buf_fd < 0)
        madvise(buf->addr, size, MADV_DOFORK);
    munmap(buf->addr, size);
}

static int in_range(uint32_t value, uint32_t maximum)
{
    return value >= 1 && value <= maximum;
}

/* Step 1: zero capacities; Xen answers -ENOBUFS with the counts. */
static long query_counts(int fd, int buf_fd, uint32_t counts[3])
{
    struct vc_buffer buf;
    struct vc_xen_vnuma_topology_info *info;
    long rc = buffer_alloc(buf_fd, sizeof(*info), &buf);

    if (rc < 0)
        return rc;
    info = buf.addr;
    info->domid = VC_DOMID_SELF;
    rc = hypercall(fd, VC_HYPERVISOR_memory_op, VC_XENMEM_get_vnumainfo, (uintptr_t)info);
    counts[0] = info->nr_vnodes;
    counts[1] = info->nr_vcpus;
    counts[2] = info->nr_vmemranges;
    buffer_free(buf_fd, &buf);
    if (rc == 0)
        return -EPROTO; /* success on a zero-capacity query: the agent refuses it too */
    if (rc != -ENOBUFS)
        return rc;
    if (!in_range(counts[0], MAX_VNODES) || !in_range(counts[1], MAX_VCPUS)
        || !in_range(counts[2], MAX_VMEMRANGES))
        return -ERANGE;
    return 0;
}

/* Step 2: one buffer laid out as the agent lays it out; copy out what the agent reads. */
static long fetch(int fd, int buf_fd, const uint32_t counts[3], struct vc_topology *out)
{
    size_t info_size = sizeof(struct vc_xen_vnuma_topology_info);
    size_t dist_off = info_size;
    size_t cpus_off = dist_off + 4 * (size_t)counts[0] * counts[0];
    size_t ranges_off = (cpus_off + 4 * (size_t)counts[1] + 7) & ~(size_t)7;
    size_t total = ranges_off + sizeof(struct vc_xen_vmemrange) * counts[2];
    struct vc_buffer buf;
    struct vc_xen_vnuma_topology_info *info;
    uint8_t *base;
    long rc = buffer_alloc(buf_fd, total, &buf);

    if (rc < 0)
        return rc;
    base = buf.addr;
    info = buf.addr;
    info->domid = VC_DOMID_SELF;
    info->nr_vnodes = counts[0];
    info->nr_vcpus = counts[1];
    info->nr_vmemranges = counts[2];
    info->vdistance = (uintptr_t)(base + dist_off);
    info->vcpu_to_vnode = (uintptr_t)(base + cpus_off);
    info->vmemrange = (uintptr_t)(base + ranges_off);
    rc = hypercall(fd, VC_HYPERVISOR_memory_op, VC_XENMEM_get_vnumainfo, (uintptr_t)info);
    if (rc == 0) {
        out->nr_vnodes = info->nr_vnodes;
        out->nr_vcpus = info->nr_vcpus;
        out->nr_vmemranges = info->nr_vmemranges;
        if (out->nr_vnodes > counts[0] || out->nr_vcpus > counts[1]
            || out->nr_vmemranges > counts[2])
            rc = -EOVERFLOW;
        else {
            memcpy(out->distances, base + dist_off, 4 * (size_t)out->nr_vnodes * out->nr_vnodes);
            memcpy(out->vcpu_to_vnode, base + cpus_off, 4 * (size_t)out->nr_vcpus);
        }
    }
    buffer_free(buf_fd, &buf);
    return rc;
}

/* One get_vnumainfo as the agent runs it: restart on -ENOBUFS/-EAGAIN, MAX_ATTEMPTS times. */
static long get_vnumainfo(int fd, int buf_fd, struct vc_topology *out)
{
    for (int attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        uint32_t counts[3];
        long rc = query_counts(fd, buf_fd, counts);

        if (rc < 0)
            return rc;
        rc = fetch(fd, buf_fd, counts, out);
        if (rc != -ENOBUFS && rc != -EAGAIN)
            return rc;
    }
    return -EAGAIN;
}

static int fail(long rc)
{
    int err = (int)-rc;

    if (err == EOPNOTSUPP) {
        fprintf(stderr, "vnuma_call: XENMEM_get_vnumainfo answered EOPNOTSUPP: no vNUMA for this "
                        "domain (an HVM guest with vnuma= in its xl.cfg is needed)\n");
        return EXIT_MISSING;
    }
    if (err == ENOSYS) {
        fprintf(stderr, "vnuma_call: XENMEM_get_vnumainfo answered ENOSYS: this Xen does not "
                        "have the hypercall (before 4.5)\n");
        return EXIT_MISSING;
    }
    if (err == EPROTO || err == ERANGE || err == EOVERFLOW) {
        fprintf(stderr, "vnuma_call: XENMEM_get_vnumainfo: counts no sane hypervisor reports "
                        "(%s)\n", strerror(err));
        return 1;
    }
    fprintf(stderr, "vnuma_call: XENMEM_get_vnumainfo failed: %s (errno %d)\n", strerror(err),
            err);
    return 1;
}

/* The fd, or -EXIT_MISSING where no privcmd device exists, or -1 (said why) where it won't open. */
static int open_privcmd(const char *only, const char **opened)
{
    size_t npaths = only ? 1 : sizeof(PRIVCMD_PATHS) / sizeof(PRIVCMD_PATHS[0]);

    for (size_t i = 0; i < npaths; i++) {
        const char *path = only ? only : PRIVCMD_PATHS[i];
        int fd = open(path, O_RDWR | O_CLOEXEC);

        if (fd >= 0) {
            *opened = path;
            return fd;
        }
        if (errno != ENOENT && errno != ENXIO && errno != ENODEV) {
            fprintf(stderr, "vnuma_call: cannot open %s: %s\n", path, strerror(errno));
            return -1;
        }
    }
    fprintf(stderr, "vnuma_call: no %s: not running on Xen (or xen-privcmd is not loaded)\n",
            only ? only : PRIVCMD_PATHS[0]);
    return -EXIT_MISSING;
}

static void print_list(const char *key, const uint32_t *values, size_t count)
{
    printf("%s ", key);
    for (size_t i = 0; i < count; i++)
        printf("%s%u", i ? "," : "", values[i]);
    printf("\n");
}

static double seconds_between(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

int main(int argc, char **argv)
{
    const char *privcmd_path = NULL, *opened = NULL, *buffer_path = "/dev/xen/hypercall";
    static struct vc_topology topology;
    struct timespec start, end, cpu_start, cpu_end;
    long calls = 1000, rc = 0;
    int opt, fd, buf_fd;

    while ((opt = getopt(argc, argv, "n:d:b:")) != -1) {
        if (opt == 'n') {
            char *rest;

            calls = strtol(optarg, &rest, 10);
            if (*rest != '\0' || calls < 1) {
                fprintf(stderr, "vnuma_call: -n: a positive number of calls, not '%s'\n", optarg);
                return 1;
            }
        } else if (opt == 'd') {
            privcmd_path = optarg;
        } else if (opt == 'b') {
            buffer_path = optarg;
        } else {
            fprintf(stderr,
                    "usage: vnuma_call [-n CALLS] [-d PRIVCMD_DEVICE] [-b BUFFER_DEVICE]\n");
            return 1;
        }
    }
    fd = open_privcmd(privcmd_path, &opened);
    if (fd < 0)
        return -fd;
    buf_fd = open(buffer_path, O_RDWR | O_CLOEXEC);

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu_start);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < calls && rc == 0; i++)
        rc = get_vnumainfo(fd, buf_fd, &topology);
    clock_gettime(CLOCK_MONOTONIC, &end);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu_end);
    if (rc < 0)
        return fail(rc);

    printf("device %s\n", opened);
    printf("buffer %s\n", buf_fd >= 0 ? "device" : "locked");
    printf("calls %ld\n", calls);
    printf("seconds_per_call %.9e\n", seconds_between(&start, &end) / (double)calls);
    printf("cpu_seconds_per_call %.9e\n", seconds_between(&cpu_start, &cpu_end) / (double)calls);
    printf("nr_vnodes %u\nnr_vcpus %u\nnr_vmemranges %u\n", topology.nr_vnodes,
           topology.nr_vcpus, topology.nr_vmemranges);
    print_list("vcpu_to_vnode", topology.vcpu_to_vnode, topology.nr_vcpus);
    print_list("distances", topology.distances, (size_t)topology.nr_vnodes * topology.nr_vnodes);
    return 0;
}

#endif /* VNUMA_CALL_FAKE_XEN, VNUMA_CALL_ABI_ONLY */
