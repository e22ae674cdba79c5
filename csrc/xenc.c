/*
 * guestagent's doorway to the kernel: privcmd hypercalls and their buffers (and, for
 * XENMEM_get_vnumainfo, its whole two-call protocol), and framed xenstore messages over the
 * xenbus device or the xenstored socket. No policy lives here; every function returns 0 (or a
 * count, or ga_vnuma_get's status) on success and a negative errno on failure, and Python turns
 * that into an exception that names the operation.
 */
#define _GNU_SOURCE
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "guestagent_xen.h"

/*
 * IOCTL_PRIVCMD_HYPERCALL. The kernel returns the hypercall's long result; glibc's ioctl()
 * returns int, so go through syscall() to keep positive results above 2^31 intact
 * (reference 1.2). The argument struct is copied by the kernel and need not be locked; what it
 * points to must live in a hypercall buffer (ga_buffer_alloc).
 */
int ga_hypercall(int fd, uint64_t op, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3,
                 uint64_t a4, long *result)
{
    struct ga_privcmd_hypercall call = { op, { a0, a1, a2, a3, a4 } };
    long rc;

    do {
        rc = syscall(SYS_ioctl, fd, (unsigned long)GA_IOCTL_PRIVCMD_HYPERCALL, &call);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return -errno;
    *result = rc;
    return 0;
}

/*
 * Memory a hypercall may read and write: Xen cannot take a page fault in the guest, so it must be
 * resident and never copy-on-write broken. With /dev/xen/hypercall (buf_fd >= 0) the kernel hands
 * out pre-populated pages; without it, locked anonymous memory kept out of children on fork and
 * touched page by page (what libxencall does, reference 1.4).
 */
void *ga_buffer_alloc(int buf_fd, size_t npages, int *err)
{
    size_t size = npages * GA_PAGE_SIZE;
    void *p;

    *err = 0;
    if (npages == 0) {
        *err = EINVAL;
        return NULL;
    }
    if (buf_fd >= 0) {
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, buf_fd, 0);
        if (p == MAP_FAILED) {
            *err = errno;
            return NULL;
        }
        return p;
    }
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
    if (p == MAP_FAILED) {
        *err = errno;
        return NULL;
    }
    if (madvise(p, size, MADV_DONTFORK) < 0) {
        *err = errno;
        munmap(p, size);
        return NULL;
    }
    for (size_t i = 0; i < npages; i++)
        ((volatile uint8_t *)p)[i * GA_PAGE_SIZE] = 0;
    return p;
}

int ga_buffer_free(void *addr, size_t npages, int from_device)
{
    size_t size = npages * GA_PAGE_SIZE;

    if (!from_device)
        madvise(addr, size, MADV_DOFORK);
    if (munmap(addr, size) < 0)
        return -errno;
    return 0;
}

/* ---- XENMEM_get_vnumainfo (reference 2.2) ---- */

/*
 * One buffer per call holds the info and, after it, the distances (uint32_t[nr_vnodes^2]), the
 * vCPU map (uint32_t[nr_vcpus]) and, 8-aligned, the ranges. Returns the bytes it needs; the
 * offsets of the vCPU map and of the ranges in *cpus_off, *ranges_off.
 */
static size_t vnuma_layout(const uint32_t cap[3], size_t *cpus_off, size_t *ranges_off)
{
    *cpus_off = sizeof(struct ga_xen_vnuma_topology_info) + 4 * (size_t)cap[0] * cap[0];
    *ranges_off = (*cpus_off + 4 * (size_t)cap[1] + 7) & ~(size_t)7;
    return *ranges_off + sizeof(struct ga_xen_vmemrange) * cap[2];
}

static size_t pages_for(size_t nbytes)
{
    return nbytes == 0 ? 1 : (nbytes + GA_PAGE_SIZE - 1) / GA_PAGE_SIZE;
}

/* The hypercall through call, else through the ioctl as ga_hypercall issues it: the hypercall's
 * result or a negative errno. */
static long vnuma_hypercall(ga_hypercall_fn call, int fd, void *info)
{
    struct ga_privcmd_hypercall args = {
        GA_HYPERVISOR_memory_op, { GA_XENMEM_get_vnumainfo, (uintptr_t)info, 0, 0, 0 }
    };
    long result;
    int rc;

    if (call != NULL)
        return call(fd, &args);
    rc = ga_hypercall(fd, args.op, args.arg[0], args.arg[1], 0, 0, 0, &result);
    return rc < 0 ? rc : result;
}

/*
 * One XENMEM_get_vnumainfo with room for cap[] entries (all 0: the size query, its handles left
 * null) in a hypercall buffer of its own, freed before it returns. The counts Xen wrote back go
 * to out[0..2], cap[] to out[3..5]; when the call succeeded and each count is within its
 * capacity, the distances (row-major), the vCPU map and each range's start, end, flags and nid
 * follow (the caller has checked that they fit out). Returns the hypercall's result (>= 0:
 * success), or -(GA_VNUMA_BUFFER_ERRNO + errno) when the buffer could not be had.
 */
static long vnuma_exchange(ga_hypercall_fn call, int fd, int buf_fd, uint16_t domid,
                           const uint32_t cap[3], uint64_t *out)
{
    size_t cpus_off, ranges_off;
    size_t npages = pages_for(vnuma_layout(cap, &cpus_off, &ranges_off));
    struct ga_xen_vnuma_topology_info *info;
    uint8_t *base;
    uint32_t nodes, vcpus, nranges;
    uint64_t *next = out + GA_VNUMA_HEADER;
    long rc;
    int err;

    base = ga_buffer_alloc(buf_fd, npages, &err);
    if (base == NULL)
        return -(GA_VNUMA_BUFFER_ERRNO + err);
    info = (struct ga_xen_vnuma_topology_info *)base;
    info->domid = domid;
    info->nr_vnodes = cap[0];
    info->nr_vcpus = cap[1];
    info->nr_vmemranges = cap[2];
    if (cap[0] != 0 || cap[1] != 0 || cap[2] != 0) {
        info->vdistance = (uintptr_t)(base + sizeof(*info));
        info->vcpu_to_vnode = (uintptr_t)(base + cpus_off);
        info->vmemrange = (uintptr_t)(base + ranges_off);
    }
    rc = vnuma_hypercall(call, fd, info);
    nodes = info->nr_vnodes;
    vcpus = info->nr_vcpus;
    nranges = info->nr_vmemranges;
    out[0] = nodes;
    out[1] = vcpus;
    out[2] = nranges;
    out[3] = cap[0];
    out[4] = cap[1];
    out[5] = cap[2];
    if (rc >= 0 && nodes <= cap[0] && vcpus <= cap[1] && nranges <= cap[2]) {
        const uint32_t *dist = (const uint32_t *)(base + sizeof(*info));
        const uint32_t *cpus = (const uint32_t *)(base + cpus_off);
        const struct ga_xen_vmemrange *ranges = (const void *)(base + ranges_off);

        for (size_t i = 0; i < (size_t)nodes * nodes; i++)
            *next++ = dist[i];
        for (size_t i = 0; i < vcpus; i++)
            *next++ = cpus[i];
        for (size_t i = 0; i < nranges; i++) {
            *next++ = ranges[i].start;
            *next++ = ranges[i].end;
            *next++ = ranges[i].flags;
            *next++ = ranges[i].nid;
        }
    }
    ga_buffer_free(base, npages, buf_fd >= 0);
    return rc;
}

/* Each count within 1..its maximum, and all the values they make within room. */
static int vnuma_counts_fit(const uint32_t count[3], const uint32_t max[3], size_t room)
{
    for (int i = 0; i < 3; i++)
        if (count[i] == 0 || count[i] > max[i])
            return 0;
    return (uint64_t)count[0] * count[0] <= room && count[1] <= room && count[2] <= room
           && GA_VNUMA_HEADER + (uint64_t)count[0] * count[0] + count[1] + 4 * (uint64_t)count[2]
                  <= room;
}

/*
 * XENMEM_get_vnumainfo's size-discovery protocol, whole: the zero-capacity query (Xen answers
 * -ENOBUFS, or -EAGAIN, with the counts), then the call with room for them, started over when
 * that call answers -ENOBUFS or -EAGAIN (the topology changed in between), attempts times at
 * most. Each call has a buffer of its own, freed on every path. Nothing is judged here beyond
 * what the buffers need: the caller checks every value (Python, guestagent/xen/vnuma.py).
 *
 * out (room values): out[0..2] the counts Xen wrote back last, out[3..5] the capacities of that
 * call; on GA_VNUMA_OK the distances (row-major), the vCPU map and each range's start, end,
 * flags and nid follow. Returns GA_VNUMA_OK; GA_VNUMA_QUERY_SUCCEEDED (the zero-capacity query
 * succeeded); GA_VNUMA_BAD_COUNTS (a count of the query's, in out[0..2], is 0, above its
 * max_*, or they do not fit room: no second call made); GA_VNUMA_OVERFLOW (the call succeeded
 * with counts above its capacities); GA_VNUMA_KEPT_CHANGING (attempts spent); a failed
 * hypercall's negative errno; -(GA_VNUMA_BUFFER_ERRNO + errno) when a buffer could not be had;
 * -EINVAL when room < GA_VNUMA_HEADER. call: see ga_hypercall_fn.
 */
int ga_vnuma_get(ga_hypercall_fn call, int privcmd_fd, int buf_fd, uint16_t domid,
                 int attempts, uint32_t max_vnodes, uint32_t max_vcpus, uint32_t max_vmemranges,
                 uint64_t *out, size_t room)
{
    const uint32_t none[3] = { 0, 0, 0 };
    const uint32_t max[3] = { max_vnodes, max_vcpus, max_vmemranges };

    if (room < GA_VNUMA_HEADER)
        return -EINVAL;
    for (int attempt = 0; attempt < attempts; attempt++) {
        uint32_t count[3];
        long rc = vnuma_exchange(call, privcmd_fd, buf_fd, domid, none, out);

        if (rc >= 0)
            return GA_VNUMA_QUERY_SUCCEEDED;
        if (rc != -ENOBUFS && rc != -EAGAIN)
            return (int)rc;
        for (int i = 0; i < 3; i++)
            count[i] = (uint32_t)out[i];
        if (!vnuma_counts_fit(count, max, room))
            return GA_VNUMA_BAD_COUNTS;
        rc = vnuma_exchange(call, privcmd_fd, buf_fd, domid, count, out);
        if (rc >= 0)
            return out[0] <= count[0] && out[1] <= count[1] && out[2] <= count[2]
                       ? GA_VNUMA_OK : GA_VNUMA_OVERFLOW;
        if (rc != -ENOBUFS && rc != -EAGAIN)
            return (int)rc;
    }
    return GA_VNUMA_KEPT_CHANGING;
}

/* ---- xenstore framing ---- */

static long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until fd is readable; timeout_ms < 0 waits forever. Returns 1, 0 on timeout, or -errno. */
static int wait_readable(int fd, int timeout_ms)
{
    struct pollfd pfd = { fd, POLLIN, 0 };
    long deadline = timeout_ms < 0 ? 0 : now_ms() + timeout_ms;

    for (;;) {
        int left = timeout_ms < 0 ? -1 : (int)(deadline - now_ms());
        int rc;

        if (timeout_ms >= 0 && left < 0)
            left = 0;
        rc = poll(&pfd, 1, left);
        if (rc > 0)
            return 1;
        if (rc == 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

/* Read exactly len bytes, waiting at most timeout_ms for each chunk. */
static int read_exact(int fd, uint8_t *buf, size_t len, int timeout_ms)
{
    size_t got = 0;

    while (got < len) {
        ssize_t n;
        int rc = wait_readable(fd, timeout_ms);

        if (rc < 0)
            return rc;
        if (rc == 0)
            return -ETIMEDOUT;
        n = read(fd, buf + got, len - got);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EPIPE;
        got += (size_t)n;
    }
    return 0;
}

/*
 * Send one message, header and payload in a single write where possible: the xenbus device
 * assembles a message from consecutive writes, a socket may accept it in parts. A failure before
 * any byte was written returns that errno (the xenbus device refuses a bad WATCH this way and the
 * connection stays usable); a failure after part of the message was written returns -EPROTO: the
 * stream is out of step and the connection must be dropped.
 */
int ga_xs_send(int fd, uint32_t type, uint32_t req_id, uint32_t tx_id,
               const uint8_t *payload, uint32_t len)
{
    uint8_t frame[sizeof(struct ga_xsd_sockmsg) + GA_XENSTORE_PAYLOAD_MAX];
    struct ga_xsd_sockmsg hdr = { type, req_id, tx_id, len };
    size_t total = sizeof(hdr) + len, sent = 0;

    if (len > GA_XENSTORE_PAYLOAD_MAX)
        return -E2BIG;
    memcpy(frame, &hdr, sizeof(hdr));
    if (len)
        memcpy(frame + sizeof(hdr), payload, len);
    while (sent < total) {
        ssize_t n = write(fd, frame + sent, total - sent);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return sent ? -EPROTO : -errno;
        }
        sent += (size_t)n;
    }
    return 0;
}

/*
 * Receive one message. Waits up to first_byte_timeout_ms (< 0: forever) for a message to start,
 * -ETIMEDOUT if none did; once a header has started, the rest must arrive within
 * message_timeout_ms per chunk or the stream is out of step (-EPROTO: the caller must drop the
 * connection). A header announcing more than cap bytes gives -EMSGSIZE with *hdr filled in.
 * Returns the payload length.
 */
int ga_xs_recv(int fd, struct ga_xsd_sockmsg *hdr, uint8_t *payload, uint32_t cap,
               int first_byte_timeout_ms, int message_timeout_ms)
{
    struct pollfd pfd = { fd, POLLIN, 0 };
    int rc;

    /* Before a message starts, a signal returns -EINTR so Python's handlers run; the caller
     * retries with what is left of its timeout. Inside a message, reads go on (see read_exact). */
    rc = poll(&pfd, 1, first_byte_timeout_ms);
    if (rc < 0)
        return -errno;
    if (rc == 0)
        return -ETIMEDOUT;
    rc = read_exact(fd, (uint8_t *)hdr, sizeof(*hdr), message_timeout_ms);
    if (rc == -ETIMEDOUT)
        return -EPROTO;
    if (rc < 0)
        return rc;
    if (hdr->len > cap)
        return -EMSGSIZE;
    rc = read_exact(fd, payload, hdr->len, message_timeout_ms);
    if (rc == -ETIMEDOUT)
        return -EPROTO;
    if (rc < 0)
        return rc;
    return (int)hdr->len;
}

/*
 * Hands the C heap's free pages back to the kernel: glibc's malloc_trim(0), which since 2.8
 * releases every whole free page, not only the top of the heap. Start-up (imports, the first
 * reads) leaves about 1 MiB of freed heap the idle daemon never reuses (benchmarks/README.md,
 * "What each MiB is"). Returns 1 when memory was released, 0 when none was or the C library has
 * no malloc_trim.
 */
int ga_release_free_memory(void)
{
#ifdef __GLIBC__
    return malloc_trim(0);
#else
    return 0;
#endif
}
