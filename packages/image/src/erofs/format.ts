/**
 * EROFS on-disk constants, as in the Linux kernel's fs/erofs/erofs_fs.h.
 * All integers are little-endian. Offsets below are byte offsets inside each structure.
 */

export const EROFS_SUPER_MAGIC = 0xE0F5E1E2
export const EROFS_SUPER_OFFSET = 1024
/** erofs_super_block is 128 bytes when sb_extslots == 0. */
export const EROFS_SB_SIZE = 128
/** struct erofs_deviceslot. */
export const EROFS_DEVT_SLOT_SIZE = 128
/** The device table starts right after the 128-byte superblock: (1024 + 128) / 128 (as mkfs.erofs does). */
export const EROFS_DEVT_SLOTOFF = 9
export const EROFS_ISLOTBITS = 5
export const EROFS_NAME_LEN = 255

export const EROFS_FEATURE_COMPAT_SB_CHKSUM = 0x1
export const EROFS_FEATURE_COMPAT_MTIME = 0x2
export const EROFS_FEATURE_INCOMPAT_CHUNKED_FILE = 0x4
export const EROFS_FEATURE_INCOMPAT_DEVICE_TABLE = 0x8

export const EROFS_INODE_FLAT_PLAIN = 0
export const EROFS_INODE_COMPRESSED_FULL = 1
export const EROFS_INODE_FLAT_INLINE = 2
export const EROFS_INODE_COMPRESSED_COMPACT = 3
export const EROFS_INODE_CHUNK_BASED = 4

export const EROFS_INODE_LAYOUT_COMPACT = 0
export const EROFS_INODE_LAYOUT_EXTENDED = 1
export const EROFS_I_VERSION_BIT = 0
export const EROFS_I_DATALAYOUT_BIT = 1
/** i_format bit 4: compact non-dir inode with nlink 1 (i_nb is startblk_hi) / dir without `.`. */
export const EROFS_I_NLINK_1_BIT = 4

export const EROFS_CHUNK_FORMAT_BLKBITS_MASK = 0x1f
export const EROFS_CHUNK_FORMAT_INDEXES = 0x20
export const EROFS_CHUNK_INDEX_SIZE = 8
export const EROFS_NULL_ADDR = 0xffffffff

export const EROFS_INODE_COMPACT_SIZE = 32
export const EROFS_INODE_EXTENDED_SIZE = 64
export const EROFS_XATTR_IBODY_HEADER_SIZE = 12
export const EROFS_XATTR_ENTRY_SIZE = 4
export const EROFS_DIRENT_SIZE = 12

export const EROFS_XATTR_INDEX_USER = 1
export const EROFS_XATTR_INDEX_POSIX_ACL_ACCESS = 2
export const EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT = 3
export const EROFS_XATTR_INDEX_TRUSTED = 4
export const EROFS_XATTR_INDEX_LUSTRE = 5
export const EROFS_XATTR_INDEX_SECURITY = 6

/** Name prefixes by index; the two ACL names are whole names (empty suffix). */
export const XATTR_PREFIXES: ReadonlyArray<readonly [number, string]> = [
  [EROFS_XATTR_INDEX_POSIX_ACL_ACCESS, 'system.posix_acl_access'],
  [EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT, 'system.posix_acl_default'],
  [EROFS_XATTR_INDEX_USER, 'user.'],
  [EROFS_XATTR_INDEX_TRUSTED, 'trusted.'],
  [EROFS_XATTR_INDEX_LUSTRE, 'lustre.'],
  [EROFS_XATTR_INDEX_SECURITY, 'security.']
]

/** Directory entry file types (FT_*). */
export const EROFS_FT_UNKNOWN = 0
export const EROFS_FT_REG_FILE = 1
export const EROFS_FT_DIR = 2
export const EROFS_FT_CHRDEV = 3
export const EROFS_FT_BLKDEV = 4
export const EROFS_FT_FIFO = 5
export const EROFS_FT_SOCK = 6
export const EROFS_FT_SYMLINK = 7

export const S_IFMT = 0o170000
export const S_IFSOCK = 0o140000
export const S_IFLNK = 0o120000
export const S_IFREG = 0o100000
export const S_IFBLK = 0o060000
export const S_IFDIR = 0o040000
export const S_IFCHR = 0o020000
export const S_IFIFO = 0o010000

/** Linux new_encode_dev(). */
export function encodeDev (major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0
}
/** Linux new_decode_dev(). */
export function decodeDev (dev: number): { major: number, minor: number } {
  return { major: (dev & 0xfff00) >>> 8, minor: ((dev & 0xff) | ((dev >>> 12) & 0xfff00)) >>> 0 }
}
