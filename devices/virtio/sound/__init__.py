"""virtio-sound (VIRTIO 1.2/1.3 sec. 5.14, device ID 25): the device, its PCM format tables and
conversions, WAV files and host audio backends."""
