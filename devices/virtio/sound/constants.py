"""Numbers of the virtio-sound specification (VIRTIO 1.2/1.3 sec. 5.14, plus the 12/24 kHz rates
queued for 1.4): queues, feature bits, request/event/status codes, structure layouts and sizes,
PCM features, the values of formats, rates and channel positions (their names, widths and Hz are
formats.py's tables), control element enums, and the HDA pin fields the jack information carries.
Nothing here does anything."""
import struct

# --- identity, queues, device features (5.14.1-5.14.3) -----------------------------------------------
DEVICE_ID = 25
CONTROLQ, EVENTQ, TXQ, RXQ = 0, 1, 2, 3
F_CTLS = 0                          # VIRTIO_SND_F_CTLS (1.3): control elements

# --- request types, event types, status codes (5.14.6) ---------------------------------------------
R_JACK_INFO = 0x0001
R_JACK_REMAP = 0x0002
R_PCM_INFO = 0x0100
R_PCM_SET_PARAMS = 0x0101
R_PCM_PREPARE = 0x0102
R_PCM_RELEASE = 0x0103
R_PCM_START = 0x0104
R_PCM_STOP = 0x0105
R_CHMAP_INFO = 0x0200
R_CTL_INFO = 0x0300
R_CTL_ENUM_ITEMS = 0x0301
R_CTL_READ = 0x0302
R_CTL_WRITE = 0x0303
R_CTL_TLV_READ = 0x0304
R_CTL_TLV_WRITE = 0x0305
R_CTL_TLV_COMMAND = 0x0306

EVT_JACK_CONNECTED = 0x1000
EVT_JACK_DISCONNECTED = 0x1001
EVT_PCM_PERIOD_ELAPSED = 0x1100
EVT_PCM_XRUN = 0x1101
EVT_CTL_NOTIFY = 0x1200

S_OK = 0x8000
S_BAD_MSG = 0x8001
S_NOT_SUPP = 0x8002
S_IO_ERR = 0x8003

REQUEST_NAMES = {
    R_JACK_INFO: "JACK_INFO", R_JACK_REMAP: "JACK_REMAP", R_PCM_INFO: "PCM_INFO",
    R_PCM_SET_PARAMS: "PCM_SET_PARAMS", R_PCM_PREPARE: "PCM_PREPARE", R_PCM_RELEASE: "PCM_RELEASE",
    R_PCM_START: "PCM_START", R_PCM_STOP: "PCM_STOP", R_CHMAP_INFO: "CHMAP_INFO", R_CTL_INFO: "CTL_INFO",
    R_CTL_ENUM_ITEMS: "CTL_ENUM_ITEMS", R_CTL_READ: "CTL_READ", R_CTL_WRITE: "CTL_WRITE",
    R_CTL_TLV_READ: "CTL_TLV_READ", R_CTL_TLV_WRITE: "CTL_TLV_WRITE", R_CTL_TLV_COMMAND: "CTL_TLV_COMMAND",
}
STATUS_NAMES = {S_OK: "OK", S_BAD_MSG: "BAD_MSG", S_NOT_SUPP: "NOT_SUPP", S_IO_ERR: "IO_ERR"}

# Data flow directions
D_OUTPUT, D_INPUT = 0, 1

# --- structures (little-endian, natural layout) ------------------------------------------------------
CONFIG = struct.Struct("<IIII")            # jacks, streams, chmaps, controls (controls: 1.3, with F_CTLS)
CONFIG_SIZE_1_2 = 12
HDR = struct.Struct("<I")                  # virtio_snd_hdr: code
EVENT = struct.Struct("<II")               # virtio_snd_event: hdr, data
QUERY_INFO = struct.Struct("<IIII")        # hdr, start_id, count, size
INFO = struct.Struct("<I")                 # virtio_snd_info: hda_fn_nid
JACK_HDR = struct.Struct("<II")            # hdr, jack_id
JACK_INFO = struct.Struct("<IIIIB7x")      # info, features, hda_reg_defconf, hda_reg_caps, connected, padding[7]
JACK_REMAP = struct.Struct("<IIII")        # jack_hdr, association, sequence
PCM_HDR = struct.Struct("<II")             # hdr, stream_id
PCM_INFO = struct.Struct("<IIQQBBB5x")     # info, features, formats, rates, direction, channels_min/max, padding[5]
PCM_SET_PARAMS = struct.Struct("<IIIIIBBBB")  # pcm_hdr, buffer_bytes, period_bytes, features, channels, format,
#                                            rate, padding
PCM_XFER = struct.Struct("<I")             # stream_id
PCM_STATUS = struct.Struct("<II")          # status, latency_bytes
CHMAP_HDR = struct.Struct("<II")           # hdr, chmap_id
CHMAP_INFO = struct.Struct("<IBB18s")      # info, direction, channels, positions[18]
CTL_HDR = struct.Struct("<II")             # hdr, control_id
# virtio_snd_ctl_info: info, role, type, access, count, index, name[44], then the value union
# {integer: le32 min/max/step | integer64: le64 min/max/step | enumerated: le32 items}. The union
# holds le64s, so with natural alignment (LP64 C, the Linux uapi header, Rust #[repr(C)]) it sits
# at offset 72 after 4 bytes of padding: 96 bytes. A 32-bit x86 guest aligns le64 to 4: the union
# follows the name directly at 68 and the struct is 92 bytes. The driver's query `size` tells them
# apart; the device answers both (controlq.py).
CTL_INFO_HEAD = struct.Struct("<IIIIII44s")   # 68 bytes
CTL_INFO_SIZE = 96
CTL_INFO_SIZE_PACKED = 92
CTL_INFO_VALUE_OFFSET = 72
CTL_INFO_VALUE_OFFSET_PACKED = 68
CTL_INFO_INT = struct.Struct("<iii")          # min, max, step (le32; signed as ALSA's long)
CTL_INFO_INT64 = struct.Struct("<qqq")        # min, max, step (le64)
CTL_INFO_ENUM = struct.Struct("<I")           # items
CTL_ENUM_ITEM_SIZE = 64                       # virtio_snd_ctl_enum_item: item[64]
CTL_VALUE_SIZE = 512                          # virtio_snd_ctl_value union
CTL_IEC958_SIZE = 176                         # status[24] subcode[147] pad dig_subframe[4]
CTL_TLV_HDR = struct.Struct("<II")            # type, length (bytes, 4-aligned), then le32 value[]
CTL_EVENT = struct.Struct("<IHH")             # hdr (CTL_NOTIFY), control_id (le16), mask (le16)
CTL_TLV_MAX_VALUE = 65536                     # a driver MUST NOT send more TLV value bytes

SIZES = {
    "hdr": 4, "event": 8, "query_info": 16, "info": 4, "jack_hdr": 8, "jack_info": 24, "jack_remap": 16,
    "pcm_hdr": 8, "pcm_info": 32, "pcm_set_params": 24, "pcm_xfer": 4, "pcm_status": 8, "chmap_hdr": 8,
    "chmap_info": 24, "ctl_hdr": 8, "ctl_info": CTL_INFO_SIZE, "ctl_enum_item": 64, "ctl_iec958": 176,
    "ctl_value": 512, "ctl_tlv": 8, "ctl_event": 8, "config": 16,
}
for _name, _s in (("event", EVENT), ("query_info", QUERY_INFO), ("jack_hdr", JACK_HDR), ("jack_info", JACK_INFO),
                  ("jack_remap", JACK_REMAP), ("pcm_hdr", PCM_HDR), ("pcm_info", PCM_INFO),
                  ("pcm_set_params", PCM_SET_PARAMS), ("pcm_status", PCM_STATUS), ("chmap_info", CHMAP_INFO),
                  ("ctl_event", CTL_EVENT), ("config", CONFIG)):
    assert _s.size == SIZES[_name], _name

# --- jacks (5.14.6.4) -----------------------------------------------------------------------------
JACK_F_REMAP = 0
JACK_FEATURES_DEFINED = 1 << JACK_F_REMAP

# --- PCM stream features (5.14.6.6.2) ----------------------------------------------------------------
PCM_F_SHMEM_HOST = 0
PCM_F_SHMEM_GUEST = 1
PCM_F_MSG_POLLING = 2
PCM_F_EVT_SHMEM_PERIODS = 3
PCM_F_EVT_XRUNS = 4
PCM_FEATURES_DEFINED = 0x1F
PCM_FEATURES_SHMEM = (1 << PCM_F_SHMEM_HOST) | (1 << PCM_F_SHMEM_GUEST)

# --- PCM formats: value = bit in pcm_info.formats (5.14.6.6.2); names, widths: formats.FORMATS ------
FORMAT_COUNT = 25
(FMT_IMA_ADPCM, FMT_MU_LAW, FMT_A_LAW, FMT_S8, FMT_U8, FMT_S16, FMT_U16, FMT_S18_3, FMT_U18_3, FMT_S20_3,
 FMT_U20_3, FMT_S24_3, FMT_U24_3, FMT_S20, FMT_U20, FMT_S24, FMT_U24, FMT_S32, FMT_U32, FMT_FLOAT, FMT_FLOAT64,
 FMT_DSD_U8, FMT_DSD_U16, FMT_DSD_U32, FMT_IEC958_SUBFRAME) = range(FORMAT_COUNT)
FORMATS_DEFINED = (1 << FORMAT_COUNT) - 1

# --- PCM frame rates: value = bit in pcm_info.rates; 12000/24000 are bits 14/15 (1.4); Hz: formats.RATES
RATE_COUNT = 16
(RATE_5512, RATE_8000, RATE_11025, RATE_16000, RATE_22050, RATE_32000, RATE_44100, RATE_48000, RATE_64000,
 RATE_88200, RATE_96000, RATE_176400, RATE_192000, RATE_384000, RATE_12000, RATE_24000) = range(RATE_COUNT)
RATES_DEFINED = (1 << RATE_COUNT) - 1

# --- channel positions (5.14.6.9); names: formats.CHMAP_POSITIONS --------------------------------------
CHMAP_MAX_SIZE = 18
CHMAP_COUNT = 37
(CHMAP_NONE, CHMAP_NA, CHMAP_MONO, CHMAP_FL, CHMAP_FR, CHMAP_RL, CHMAP_RR, CHMAP_FC, CHMAP_LFE, CHMAP_SL,
 CHMAP_SR, CHMAP_RC, CHMAP_FLC, CHMAP_FRC, CHMAP_RLC, CHMAP_RRC, CHMAP_FLW, CHMAP_FRW, CHMAP_FLH, CHMAP_FCH,
 CHMAP_FRH, CHMAP_TC, CHMAP_TFL, CHMAP_TFR, CHMAP_TFC, CHMAP_TRL, CHMAP_TRR, CHMAP_TRC, CHMAP_TFLC, CHMAP_TFRC,
 CHMAP_TSL, CHMAP_TSR, CHMAP_LLFE, CHMAP_RLFE, CHMAP_BC, CHMAP_BLC, CHMAP_BRC) = range(CHMAP_COUNT)

# --- control elements (1.3, 5.14.6.10) ---------------------------------------------------------------
CTL_ROLE_UNDEFINED, CTL_ROLE_VOLUME, CTL_ROLE_MUTE, CTL_ROLE_GAIN = range(4)


def ctl_role(role: int, direction: int) -> int:
    """The `role` field: (role << 1) | direction, or 0 for UNDEFINED."""
    return 0 if role == CTL_ROLE_UNDEFINED else (role << 1) | direction


CTL_TYPE_BOOLEAN, CTL_TYPE_INTEGER, CTL_TYPE_INTEGER64, CTL_TYPE_ENUMERATED, CTL_TYPE_BYTES, CTL_TYPE_IEC958 = \
    range(6)
CTL_TYPE_NAMES = ("BOOLEAN", "INTEGER", "INTEGER64", "ENUMERATED", "BYTES", "IEC958")
CTL_COUNT_MAX = (128, 128, 64, 128, 512, 1)   # per type
(CTL_ACCESS_READ, CTL_ACCESS_WRITE, CTL_ACCESS_VOLATILE, CTL_ACCESS_INACTIVE, CTL_ACCESS_TLV_READ,
 CTL_ACCESS_TLV_WRITE, CTL_ACCESS_TLV_COMMAND) = range(7)
CTL_ACCESS_DEFINED = 0x7F
CTL_EVT_MASK_VALUE, CTL_EVT_MASK_INFO, CTL_EVT_MASK_TLV = range(3)
CTL_NAME_MAX = 44        # incl. the terminating NUL
CTL_ITEM_MAX = 64

# ALSA TLV types (include/uapi/sound/tlv.h) the device's metadata uses
TLVT_CONTAINER = 0
TLVT_DB_SCALE = 1        # [min (0.01 dB), step (0.01 dB) | TLV_DB_SCALE_MUTE]
TLVT_DB_LINEAR = 2       # [min (0.01 dB), max (0.01 dB)]: amplitude linear in the value
TLVT_DB_RANGE = 3
TLVT_DB_MINMAX = 4       # [min, max] (0.01 dB)
TLVT_DB_MINMAX_MUTE = 5  # same, lowest value mutes
TLV_DB_SCALE_MUTE = 0x10000
TLV_DB_GAIN_MUTE = -9999999

# --- HDA fields in jack information (HDA 7.3.3.31 pin default configuration, 7.3.4.9 pin caps) -------
HDA_PORT_JACK, HDA_PORT_NONE, HDA_PORT_FIXED, HDA_PORT_BOTH = range(4)     # defconf bits 31:30
HDA_LOC_EXTERNAL_REAR, HDA_LOC_EXTERNAL_FRONT = 0x01, 0x02                # defconf bits 29:24
HDA_LOC_INTERNAL = 0x10
(HDA_DEV_LINE_OUT, HDA_DEV_SPEAKER, HDA_DEV_HP_OUT, HDA_DEV_CD, HDA_DEV_SPDIF_OUT, HDA_DEV_DIGITAL_OUT,
 HDA_DEV_MODEM_LINE, HDA_DEV_MODEM_HANDSET, HDA_DEV_LINE_IN, HDA_DEV_AUX, HDA_DEV_MIC_IN, HDA_DEV_TELEPHONY,
 HDA_DEV_SPDIF_IN, HDA_DEV_DIGITAL_IN) = range(14)                        # defconf bits 23:20
HDA_DEV_OTHER = 0xF
HDA_CONN_UNKNOWN, HDA_CONN_1_8, HDA_CONN_1_4 = 0, 1, 2                    # defconf bits 19:16
HDA_COLOR_UNKNOWN, HDA_COLOR_BLACK, HDA_COLOR_GREY, HDA_COLOR_BLUE, HDA_COLOR_GREEN, HDA_COLOR_RED = range(6)
HDA_COLOR_PINK = 9                                                       # defconf bits 15:12
HDA_MISC_NO_PRESENCE_DETECT = 0x1                                        # defconf bits 11:8
HDA_PINCAP_PRESENCE_DETECT = 1 << 2
HDA_PINCAP_HEADPHONE_DRIVE = 1 << 3
HDA_PINCAP_OUTPUT = 1 << 4
HDA_PINCAP_INPUT = 1 << 5


def hda_defconf(port: int, location: int, device: int, connection: int, color: int, misc: int,
                association: int, sequence: int) -> int:
    """A pin default configuration register value (HDA 7.3.3.31)."""
    return ((port & 3) << 30 | (location & 0x3F) << 24 | (device & 0xF) << 20 | (connection & 0xF) << 16
            | (color & 0xF) << 12 | (misc & 0xF) << 8 | (association & 0xF) << 4 | (sequence & 0xF))
