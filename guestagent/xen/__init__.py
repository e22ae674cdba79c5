"""The Xen layer: hypercalls through privcmd, xenstore, hypervisor detection."""
