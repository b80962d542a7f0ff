export const LOCAL_HEADER_SIGNATURE = 0x04034b50;
export const CENTRAL_HEADER_SIGNATURE = 0x02014b50;
export const END_SIGNATURE = 0x06054b50;
export const ZIP64_END_SIGNATURE = 0x06064b50;
export const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;

export const LOCAL_HEADER_SIZE = 30;
export const CENTRAL_HEADER_SIZE = 46;
export const END_SIZE = 22;
export const ZIP64_END_SIZE = 56;
export const ZIP64_LOCATOR_SIZE = 20;
/** The end record may be followed by a comment of up to 65,535 bytes. */
export const MAX_END_SEARCH = END_SIZE + 0xffff;

export const ZIP64_EXTRA_ID = 0x0001;
/** PyTorch pads local headers with an extra field of this id ("FB") to align entry data. */
export const PADDING_EXTRA_ID = 0x4246;

export const UINT16_MAX = 0xffff;
export const UINT32_MAX = 0xffffffff;

/** Stored (no compression): the only method PyTorch writes and the only one we read. */
export const METHOD_STORED = 0;
