"""The libvirt side: a typed backend for virtual networks (the only code that imports libvirt)."""
