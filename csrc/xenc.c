/*
 * guestagent's doorway to the kernel: privcmd hypercalls and their buffers, and framed xenstore
 * messages over the xenbus device or the xenstored socket. No policy lives here; every function
 * returns 0 (or a count) on success and a negative errno on failure, and Python turns that into
 * an exception that names the operation.
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

/* ---- XENMEM_get_vnumainfo's buffer (reference 2.2) ---- */

/*
 * One buffer per call holds the info and, after it, the distances (uint32_t[nr_vnodes^2]), the
 * vCPU map (uint32_t[nr_vcpus]) and, 8-aligned, the ranges. Returns the bytes it needs; the
 * offsets of the vCPU map and of the ranges in *cpus_off, *ranges_off.
 */
static size_t vnuma_layout(uint32_t nr_vnodes, uint32_t nr_vcpus, uint32_t nr_vmemranges,
                           size_t *cpus_off, size_t *ranges_off)
{
    *cpus_off = sizeof(struct ga_xen_vnuma_topology_info) + 4 * (size_t)nr_vnodes * nr_vnodes;
    *ranges_off = (*cpus_off + 4 * (size_t)nr_vcpus + 7) & ~(size_t)7;
    return *ranges_off + sizeof(struct ga_xen_vmemrange) * nr_vmemranges;
}

static size_t pages_for(size_t nbytes)
{
    return nbytes == 0 ? 1 : (nbytes + GA_PAGE_SIZE - 1) / GA_PAGE_SIZE;
}

/*
 * A hypercall buffer (ga_buffer_alloc) laid out for XENMEM_get_vnumainfo with room for the
 * capacities given: the info's domid and capacities set, its handles pointing at the arrays
 * (left null when all three capacities are 0: the size query). Returns the buffer's address, the
 * hypercall's argument, or a negative errno. Hand it to ga_vnuma_collect, which frees it.
 */
long ga_vnuma_alloc(int buf_fd, uint16_t domid, uint32_t nr_vnodes, uint32_t nr_vcpus,
                    uint32_t nr_vmemranges)
{
    size_t cpus_off, ranges_off;
    size_t size = vnuma_layout(nr_vnodes, nr_vcpus, nr_vmemranges, &cpus_off, &ranges_off);
    struct ga_xen_vnuma_topology_info *info;
    uint8_t *base;
    int err;

    base = ga_buffer_alloc(buf_fd, pages_for(size), &err);
    if (base == NULL)
        return -err;
    info = (struct ga_xen_vnuma_topology_info *)base;
    info->domid = domid;
    info->nr_vnodes = nr_vnodes;
    info->nr_vcpus = nr_vcpus;
    info->nr_vmemranges = nr_vmemranges;
    if (nr_vnodes != 0 || nr_vcpus != 0 || nr_vmemranges != 0) {
        info->vdistance = (uintptr_t)(base + sizeof(*info));
        info->vcpu_to_vnode = (uintptr_t)(base + cpus_off);
        info->vmemrange = (uintptr_t)(base + ranges_off);
    }
    return (long)(uintptr_t)base;
}

/*
 * After the hypercall on a buffer from ga_vnuma_alloc with these capacities: the counts the
 * hypervisor wrote back into out[0..2] (nr_vnodes, nr_vcpus, nr_vmemranges); when each is within
 * its capacity and out_len holds them, then the distances (row-major), the vCPU map, and each
 * range's start, end, flags and nid, as many as the counts say; the buffer is freed either way.
 * Returns how many values it wrote to out (3, or 3 + n^2 + v + 4r), or -EINVAL when out_len < 3.
 */
int ga_vnuma_collect(long address, int from_device, uint32_t nr_vnodes, uint32_t nr_vcpus,
                     uint32_t nr_vmemranges, uint64_t *out, size_t out_len)
{
    size_t cpus_off, ranges_off;
    size_t size = vnuma_layout(nr_vnodes, nr_vcpus, nr_vmemranges, &cpus_off, &ranges_off);
    uint8_t *base = (uint8_t *)(uintptr_t)address;
    const struct ga_xen_vnuma_topology_info *info = (const void *)base;
    const uint32_t *dist = (const uint32_t *)(base + sizeof(*info));
    const uint32_t *cpus = (const uint32_t *)(base + cpus_off);
    const struct ga_xen_vmemrange *ranges = (const void *)(base + ranges_off);
    uint32_t nodes = info->nr_vnodes, vcpus = info->nr_vcpus, nranges = info->nr_vmemranges;
    size_t written = 0;

    if (out_len >= 3) {
        out[0] = nodes;
        out[1] = vcpus;
        out[2] = nranges;
        written = 3;
        if (nodes <= nr_vnodes && vcpus <= nr_vcpus && nranges <= nr_vmemranges
            && out_len - 3 >= (size_t)nodes * nodes + vcpus + 4 * (size_t)nranges) {
            for (size_t i = 0; i < (size_t)nodes * nodes; i++)
                out[written++] = dist[i];
            for (size_t i = 0; i < vcpus; i++)
                out[written++] = cpus[i];
            for (size_t i = 0; i < nranges; i++) {
                out[written++] = ranges[i].start;
                out[written++] = ranges[i].end;
                out[written++] = ranges[i].flags;
                out[written++] = ranges[i].nid;
            }
        }
    }
    ga_buffer_free(base, pages_for(size), from_device);
    return out_len >= 3 ? (int)written : -EINVAL;
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
