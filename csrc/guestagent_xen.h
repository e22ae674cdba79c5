/*
 * guestagent's own declarations of the Xen and Linux kernel ABI it uses.
 *
 * This file is read twice: by the C compiler (csrc/xenc.c) and by cffi's cdef() parser
 * (guestagent/xen/_build.py), so it stays inside the C subset cffi understands: fixed-size
 * integer types, plain structs and unions, integer #defines, prototypes. No include guards, no
 * other preprocessor logic.
 *
 * Every struct here is checked field by field (offsetof, sizeof) against Xen's own public headers
 * from Debian's libxen-dev by tests/test_abi_layout.py. Guest handles are declared as uint64_t:
 * on x86_64 XEN_GUEST_HANDLE and XEN_GUEST_HANDLE_64 are 8 bytes holding a user-space address.
 * Sources: reference sections 1.2, 2.1, 3.2, 6.2, 7.3; the domctl from Debian's
 * /usr/include/xen/domctl.h (libxen-dev 4.17).
 */

/* ---- privcmd (Linux include/uapi/xen/privcmd.h) ---- */
#define GA_IOCTL_PRIVCMD_HYPERCALL 0x305000
#define GA_PAGE_SIZE 4096

struct ga_privcmd_hypercall {
    uint64_t op;
    uint64_t arg[5];
};

/* ---- hypercall numbers (xen/include/public/xen.h) ---- */
#define GA_HYPERVISOR_memory_op 12
#define GA_HYPERVISOR_xen_version 17
#define GA_HYPERVISOR_sysctl 35
#define GA_HYPERVISOR_domctl 36
#define GA_HYPERVISOR_tmem_op 38

#define GA_XENVER_version 0
#define GA_DOMID_SELF 0x7FF0

/* ---- XENMEM_get_vnumainfo (public/memory.h) ---- */
#define GA_XENMEM_get_vnumainfo 26

struct ga_xen_vmemrange {
    uint64_t start;
    uint64_t end;
    uint32_t flags;
    uint32_t nid;
};

struct ga_xen_vnuma_topology_info {
    uint16_t domid;
    uint16_t pad;
    uint32_t nr_vnodes;
    uint32_t nr_vcpus;
    uint32_t nr_vmemranges;
    uint64_t vdistance;       /* handle: uint32_t[nr_vnodes * nr_vnodes] */
    uint64_t vcpu_to_vnode;   /* handle: uint32_t[nr_vcpus] */
    uint64_t vmemrange;       /* handle: struct ga_xen_vmemrange[nr_vmemranges] */
};

/* ---- xenstore wire header (public/io/xs_wire.h) ---- */
#define GA_XENSTORE_PAYLOAD_MAX 4096

struct ga_xsd_sockmsg {
    uint32_t type;
    uint32_t req_id;
    uint32_t tx_id;
    uint32_t len;
};

/* ---- tmem (public/tmem.h, interface >= 0x00040600, last in Xen 4.12) ---- */
struct ga_tmem_op {
    uint32_t cmd;
    int32_t pool_id;
    union {
        struct {
            uint64_t uuid[2];
            uint32_t flags;
            uint32_t arg1;
        } creat;
        struct {
            uint64_t oid[3];
            uint32_t index;
            uint32_t tmem_offset;
            uint32_t pfn_offset;
            uint32_t len;
            uint64_t cmfn;
        } gen;
    } u;
};

/* ---- sysctl (public/sysctl.h, Xen 4.17: XEN_SYSCTL_INTERFACE_VERSION 0x15) ---- */
#define GA_XEN_SYSCTL_physinfo 3
#define GA_XEN_SYSCTL_cputopoinfo 16
#define GA_XEN_SYSCTL_numainfo 17
#define GA_XEN_SYSCTL_pcitopoinfo 22

struct ga_xen_sysctl_meminfo {
    uint64_t memsize;
    uint64_t memfree;
};

struct ga_xen_sysctl_numainfo {
    uint32_t num_nodes;
    uint64_t meminfo;         /* handle: struct ga_xen_sysctl_meminfo[num_nodes] */
    uint64_t distance;        /* handle: uint32_t[num_nodes * num_nodes] */
};

struct ga_xen_sysctl_cputopo {
    uint32_t core;
    uint32_t socket;
    uint32_t node;
};

struct ga_xen_sysctl_cputopoinfo {
    uint32_t num_cpus;
    uint64_t cputopo;         /* handle: struct ga_xen_sysctl_cputopo[num_cpus] */
};

struct ga_physdev_pci_device {
    uint16_t seg;
    uint8_t bus;
    uint8_t devfn;
};

struct ga_xen_sysctl_pcitopoinfo {
    uint32_t num_devs;
    uint64_t devs;            /* handle: struct ga_physdev_pci_device[num_devs] */
    uint64_t nodes;           /* handle: uint32_t[num_devs] */
};

struct ga_xen_sysctl_physinfo {
    uint32_t threads_per_core;
    uint32_t cores_per_socket;
    uint32_t nr_cpus;
    uint32_t max_cpu_id;
    uint32_t nr_nodes;
    uint32_t max_node_id;
    uint32_t cpu_khz;
    uint32_t capabilities;
    uint32_t arch_capabilities;
    uint32_t pad;
    uint64_t total_pages;
    uint64_t free_pages;
    uint64_t scrub_pages;
    uint64_t outstanding_pages;
    uint64_t max_mfn;
    uint32_t hw_cap[8];
};

struct ga_xen_sysctl {
    uint32_t cmd;
    uint32_t interface_version;
    union {
        struct ga_xen_sysctl_physinfo physinfo;
        struct ga_xen_sysctl_cputopoinfo cputopoinfo;
        struct ga_xen_sysctl_numainfo numainfo;
        struct ga_xen_sysctl_pcitopoinfo pcitopoinfo;
        uint8_t pad[128];
    } u;
};

/* ---- domctl (public/domctl.h, Xen 4.17: XEN_DOMCTL_INTERFACE_VERSION 0x15) ---- */
#define GA_XEN_DOMCTL_getvcpuinfo 14
#define GA_XEN_DOMCTL_getvcpuaffinity 25
#define GA_XEN_VCPUAFFINITY_HARD 1
#define GA_XEN_VCPUAFFINITY_SOFT 2

/* public/xen.h (__XEN_TOOLS__): a bitmap of nr_bits bits, one byte per 8, LSB first */
struct ga_xenctl_bitmap {
    uint64_t bitmap;          /* handle: uint8_t[(nr_bits + 7) / 8] */
    uint32_t nr_bits;
};

struct ga_xen_domctl_vcpuaffinity {
    uint32_t vcpu;            /* IN */
    uint32_t flags;           /* IN: GA_XEN_VCPUAFFINITY_HARD | _SOFT */
    struct ga_xenctl_bitmap cpumap_hard;  /* OUT for get: the hard affinity as set */
    struct ga_xenctl_bitmap cpumap_soft;  /* OUT for get: the soft affinity as set */
};

struct ga_xen_domctl_getvcpuinfo {
    uint32_t vcpu;            /* IN */
    uint8_t online;           /* OUT: not hot-unplugged */
    uint8_t blocked;
    uint8_t running;          /* scheduled on its pCPU right now */
    uint64_t cpu_time;        /* ns spent running, since the vCPU was created */
    uint32_t cpu;             /* the pCPU it is on (last ran on) */
};

struct ga_xen_domctl {
    uint32_t cmd;
    uint32_t interface_version;
    uint16_t domain;
    uint16_t _pad[3];
    union {
        struct ga_xen_domctl_getvcpuinfo getvcpuinfo;
        struct ga_xen_domctl_vcpuaffinity vcpuaffinity;
        uint8_t pad[128];
    } u;
};

/* ---- XENMEM_get_vnumainfo's whole protocol in one call (ga_vnuma_get, csrc/xenc.c) ---- */
/* Issues one privcmd hypercall: its result or a negative errno. ga_vnuma_get's NULL is the
 * ioctl itself (ga_hypercall); tests pass a simulated hypervisor. */
typedef long (*ga_hypercall_fn)(int fd, const struct ga_privcmd_hypercall *call);

/* ga_vnuma_get's answers; out[0..GA_VNUMA_HEADER) holds the counts and the capacities. */
#define GA_VNUMA_OK 0
#define GA_VNUMA_QUERY_SUCCEEDED 1
#define GA_VNUMA_BAD_COUNTS 2
#define GA_VNUMA_OVERFLOW 3
#define GA_VNUMA_KEPT_CHANGING 4
#define GA_VNUMA_HEADER 6
/* A buffer that could not be had: -(GA_VNUMA_BUFFER_ERRNO + errno); errnos stay below 4096. */
#define GA_VNUMA_BUFFER_ERRNO 65536

/* ---- the doorway's functions (csrc/xenc.c); errors come back as negative errno ---- */
int ga_hypercall(int fd, uint64_t op, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3,
                 uint64_t a4, long *result);
void *ga_buffer_alloc(int buf_fd, size_t npages, int *err);
int ga_buffer_free(void *addr, size_t npages, int from_device);
int ga_vnuma_get(ga_hypercall_fn call, int privcmd_fd, int buf_fd, uint16_t domid,
                 int attempts, uint32_t max_vnodes, uint32_t max_vcpus, uint32_t max_vmemranges,
                 uint64_t *out, size_t room);
int ga_xs_send(int fd, uint32_t type, uint32_t req_id, uint32_t tx_id,
               const uint8_t *payload, uint32_t len);
int ga_xs_recv(int fd, struct ga_xsd_sockmsg *hdr, uint8_t *payload, uint32_t cap,
               int first_byte_timeout_ms, int message_timeout_ms);
int ga_release_free_memory(void);
