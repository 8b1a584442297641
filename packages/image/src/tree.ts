/**
 * The in-memory tree a layer becomes before it is written as EROFS.
 *
 * Names are *byte strings*: each character is one byte of the on-disk name (latin1 decoding),
 * so any byte sequence a tar can carry survives untouched and sorting by JS string order is
 * sorting by bytes (what EROFS directories need). Use `byteName()` / `nameBytes()` to convert.
 *
 * A node object referenced from two directories is one inode (a hardlink): the writer gives it
 * one nid and counts its links.
 */

export type NodeKind = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket'

export interface NodeMeta {
  /** Permission bits including setuid/setgid/sticky (mode & 0o7777). */
  mode: number
  uid: number
  gid: number
  /** Seconds since the epoch (may be negative). */
  mtime: number
  /** Nanoseconds, 0..999999999. */
  mtimeNsec: number
  /** Full xattr names (`user.x`, `trusted.overlay.opaque`, `security.capability`) to raw values. */
  xattrs: Map<string, Buffer>
}

/** Where one chunk of a file lives: block address in the data blob of device `device` (1-based). */
export interface ChunkRef { device: number, blkaddr: number }

export interface FileNode extends NodeMeta {
  kind: 'file'
  size: number
  /** One entry per chunk of the file, `null` for a hole (all-zero chunk, read back as zeros). */
  chunks: Array<ChunkRef | null>
}
export interface DirNode extends NodeMeta { kind: 'dir', entries: Map<string, Node> }
export interface SymlinkNode extends NodeMeta { kind: 'symlink', target: Buffer }
export interface DeviceNode extends NodeMeta { kind: 'char' | 'block', major: number, minor: number }
export interface SpecialNode extends NodeMeta { kind: 'fifo' | 'socket' }
export type Node = FileNode | DirNode | SymlinkNode | DeviceNode | SpecialNode

/** A byte string from raw bytes. */
export function byteName (bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1')
}
/** A byte string from a JS (unicode) string, encoded as UTF-8. */
export function utf8Name (name: string): string {
  return Buffer.from(name, 'utf8').toString('latin1')
}
/** The raw bytes of a byte string. */
export function nameBytes (name: string): Buffer {
  return Buffer.from(name, 'latin1')
}

export function emptyMeta (): NodeMeta {
  return { mode: 0o755, uid: 0, gid: 0, mtime: 0, mtimeNsec: 0, xattrs: new Map() }
}

export function newDir (meta: NodeMeta = emptyMeta()): DirNode {
  return { ...meta, kind: 'dir', entries: new Map() }
}
