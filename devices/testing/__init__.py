"""Drivers and rigs for testing devices without a guest, shipped as rust-vmm ships its mocks:
a virtio driver in Python over BytearrayMemory (split and packed rings) and a virtio-sound rig.
For tests and benchmarks of this project and of VMMs that use its devices; not for a VMM's data path."""
