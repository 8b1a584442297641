/**
 * EROFS metadata image writer, following the kernel's fs/erofs/erofs_fs.h.
 *
 * Layout of the image we write (block size 4096, meta_blkaddr 0, so nid = byte offset / 32):
 *
 *   block 0      [0..1024) zero | superblock (128 B) | device table (128 B per extra device)
 *                then inodes, 32-byte aligned, root first, breadth-first by directory
 *   ...          inode area (each inode: core, inline xattrs, then inline tail data or chunk indexes)
 *   xattr_blkaddr shared xattr area (entries used by two or more inodes), block aligned
 *   data blocks  directory and symlink blocks that do not fit inline (FLAT_PLAIN / FLAT_INLINE heads)
 *
 * Regular files with data are EROFS_INODE_CHUNK_BASED with 8-byte chunk indexes; each index names the
 * device (1-based slot in the device table: a data blob) and the block address of the chunk inside it.
 * Holes (all-zero chunks) use EROFS_NULL_ADDR. Empty files are FLAT_PLAIN with no blocks.
 *
 * Rules kept so that the kernel and fsck.erofs accept the image:
 *  - an inode's core + xattrs (+ inline tail) never crosses a block boundary (it starts a new block instead);
 *  - inline tails are used only when the data size is not a multiple of the block size;
 *  - directory entries are sorted by bytes (including `.` and `..`) and split so no entry crosses a block;
 *  - compact inodes only where uid/gid/nlink/size fit and the mtime equals the superblock epoch
 *    (so kernels before and after the 6.15 compact-mtime change read the same time).
 */
import { BLOCK_SIZE, BLOCK_BITS } from '../constants.js'
import { ErofsWriteError } from '../errors.js'
import type { DirNode, Node } from '../tree.js'
import * as F from './format.js'

export interface ErofsDevice {
  /** Up to 64 bytes stored in the device slot tag; we store the blob's sha256 hex. */
  tag: string
  /** Size of the device in blocks. */
  blocks: number
}

export interface WriteErofsOptions {
  /** Chunk size of chunk-based files, a power of two >= 4096. */
  chunkSize: number
  /** Extra devices (data blobs) that chunk indexes refer to, in device-id order (id 1 first). */
  devices: ErofsDevice[]
  /** 16-byte volume uuid (default: all zero). */
  uuid?: Uint8Array
  /** Up to 16 bytes of volume name. */
  volumeName?: string
}

export interface ErofsImageInfo {
  image: Buffer
  rootNid: number
  inodes: number
  blocks: number
}

const MODE_TYPE: Record<Node['kind'], number> = {
  file: F.S_IFREG, dir: F.S_IFDIR, symlink: F.S_IFLNK, char: F.S_IFCHR, block: F.S_IFBLK, fifo: F.S_IFIFO, socket: F.S_IFSOCK
}
const FILE_TYPE: Record<Node['kind'], number> = {
  file: F.EROFS_FT_REG_FILE, dir: F.EROFS_FT_DIR, symlink: F.EROFS_FT_SYMLINK, char: F.EROFS_FT_CHRDEV, block: F.EROFS_FT_BLKDEV, fifo: F.EROFS_FT_FIFO, socket: F.EROFS_FT_SOCK
}

interface XattrEnc { index: number, suffix: Buffer, value: Buffer, key: string, size: number }

interface DirBlock { names: Array<{ name: Buffer, node: Node }>, used: number }

interface InodeInfo {
  node: Node
  nid: number
  ino: number
  nlink: number
  extended: boolean
  layout: number
  parent: DirNode | undefined
  shared: number[]
  inline: XattrEnc[]
  xattrSize: number
  /** Directory blocks (dirs only). */
  dirBlocks?: DirBlock[]
  /** Data bytes for symlinks; for dirs produced at serialization. */
  dataSize: number
  /** Blocks in the data area (full blocks, or all blocks for FLAT_PLAIN). */
  dataBlocks: number
  blkaddr: number
  /** Bytes from the inode start to the end of its slot (before 32-byte alignment). */
  total: number
}

function align (n: number, a: number): number {
  return Math.ceil(n / a) * a
}

export function encodeXattrName (name: string): { index: number, suffix: Buffer } {
  for (const [index, prefix] of F.XATTR_PREFIXES) {
    if (index === F.EROFS_XATTR_INDEX_POSIX_ACL_ACCESS || index === F.EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT) {
      if (name === prefix) return { index, suffix: Buffer.alloc(0) }
      continue
    }
    if (name.startsWith(prefix) && name.length > prefix.length) {
      return { index, suffix: Buffer.from(name.slice(prefix.length), 'latin1') }
    }
  }
  throw new ErofsWriteError(`xattr ${JSON.stringify(name)}: namespace not storable in EROFS (user., trusted., security., system.posix_acl_*)`)
}

function xattrEntry (name: string, value: Buffer): XattrEnc {
  const { index, suffix } = encodeXattrName(name)
  if (suffix.length > 255) throw new ErofsWriteError(`xattr name too long: ${name.length} bytes`)
  if (value.length > 65535) throw new ErofsWriteError(`xattr ${JSON.stringify(name)} value too large: ${value.length} bytes`)
  return { index, suffix, value, key: `${name}\0${value.toString('latin1')}`, size: align(F.EROFS_XATTR_ENTRY_SIZE + suffix.length + value.length, 4) }
}

function writeXattr (buf: Buffer, off: number, x: XattrEnc): void {
  buf.writeUInt8(x.suffix.length, off)
  buf.writeUInt8(x.index, off + 1)
  buf.writeUInt16LE(x.value.length, off + 2)
  x.suffix.copy(buf, off + 4)
  x.value.copy(buf, off + 4 + x.suffix.length)
}

function byteCompare (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

/** Split sorted directory entries into blocks; no entry (dirent + name) crosses a block. */
function splitDir (entries: Array<{ name: Buffer, node: Node }>): DirBlock[] {
  const blocks: DirBlock[] = []
  let cur: DirBlock = { names: [], used: 0 }
  for (const e of entries) {
    const need = F.EROFS_DIRENT_SIZE + e.name.length
    if (cur.used + need > BLOCK_SIZE) {
      blocks.push(cur)
      cur = { names: [], used: 0 }
    }
    cur.names.push(e)
    cur.used += need
  }
  blocks.push(cur)
  return blocks
}

/**
 * Writes `root` as an EROFS metadata image. File data is not written here: chunk indexes point into
 * the devices (data blobs) listed in `opts.devices`.
 */
export function writeErofs (root: DirNode, opts: WriteErofsOptions): ErofsImageInfo {
  const chunkBits = Math.log2(opts.chunkSize)
  if (!Number.isInteger(chunkBits) || chunkBits < BLOCK_BITS || chunkBits - BLOCK_BITS > F.EROFS_CHUNK_FORMAT_BLKBITS_MASK) {
    throw new ErofsWriteError(`chunk size ${opts.chunkSize} is not a power of two in [4096, 2^43]`)
  }
  if (opts.devices.length > 0xffff) throw new ErofsWriteError('too many devices')

  // 1. Collect inodes breadth-first; count links.
  const infos = new Map<Node, InodeInfo>()
  const order: InodeInfo[] = []
  const add = (node: Node, parent: DirNode | undefined): void => {
    const seen = infos.get(node)
    if (seen !== undefined) {
      if (node.kind === 'dir') throw new ErofsWriteError('a directory is linked twice')
      seen.nlink++
      return
    }
    const info: InodeInfo = {
      node, nid: 0, ino: order.length + 1, nlink: node.kind === 'dir' ? 2 : 1, extended: false, layout: F.EROFS_INODE_FLAT_PLAIN,
      parent, shared: [], inline: [], xattrSize: 0, dataSize: 0, dataBlocks: 0, blkaddr: 0, total: 0
    }
    infos.set(node, info)
    order.push(info)
  }
  add(root, root)
  for (let i = 0; i < order.length; i++) {
    const info = order[i]!
    const node = info.node
    if (node.kind !== 'dir') continue
    const names = [...node.entries.keys()].sort(byteCompare)
    for (const name of names) {
      if (name.length === 0 || name.length > F.EROFS_NAME_LEN || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
        throw new ErofsWriteError(`invalid name ${JSON.stringify(name)}`)
      }
      const child = node.entries.get(name)!
      add(child, node)
      if (child.kind === 'dir') info.nlink++
    }
  }

  // 2. Epoch: the most common mtime, so most inodes can be compact.
  const times = new Map<string, number>()
  let epoch = 0
  let fixedNsec = 0
  let best = 0
  for (const { node } of order) {
    const k = `${node.mtime}:${node.mtimeNsec}`
    const c = (times.get(k) ?? 0) + 1
    times.set(k, c)
    if (c > best) { best = c; epoch = node.mtime; fixedNsec = node.mtimeNsec }
  }
  if (epoch < 0) { epoch = 0; fixedNsec = 0 }

  // 3. Xattrs: pairs used by two or more inodes go to the shared area.
  const pairCount = new Map<string, number>()
  const encoded = new Map<Node, XattrEnc[]>()
  for (const { node } of order) {
    if (node.xattrs.size === 0) continue
    const list = [...node.xattrs].sort((a, b) => byteCompare(a[0], b[0])).map(([n, v]) => xattrEntry(n, v))
    encoded.set(node, list)
    for (const x of list) pairCount.set(x.key, (pairCount.get(x.key) ?? 0) + 1)
  }
  const sharedIds = new Map<string, number>()
  const sharedList: XattrEnc[] = []
  let sharedBytes = 0
  for (const { node } of order) {
    const list = encoded.get(node)
    if (list === undefined) continue
    const info = infos.get(node)!
    for (const x of list) {
      if ((pairCount.get(x.key) ?? 0) >= 2 && x.size > 4 && info.shared.length < 255) {
        let id = sharedIds.get(x.key)
        if (id === undefined) {
          id = sharedBytes / 4
          sharedIds.set(x.key, id)
          sharedList.push(x)
          sharedBytes += x.size
        }
        info.shared.push(id)
      } else {
        info.inline.push(x)
      }
    }
    info.xattrSize = F.EROFS_XATTR_IBODY_HEADER_SIZE + 4 * info.shared.length + info.inline.reduce((s, x) => s + x.size, 0)
    if (info.xattrSize > F.EROFS_XATTR_IBODY_HEADER_SIZE + 4 * 65534) throw new ErofsWriteError('too many xattrs on one inode')
  }

  // 4. Sizes and layouts.
  for (const info of order) {
    const node = info.node
    const size = node.kind === 'file' ? node.size : node.kind === 'symlink' ? node.target.length : 0
    if (node.kind === 'dir') {
      const entries = [
        { name: Buffer.from('.'), node: node as Node },
        { name: Buffer.from('..'), node: info.parent! as Node },
        ...[...node.entries].map(([n, c]) => ({ name: Buffer.from(n, 'latin1'), node: c }))
      ].sort((a, b) => Buffer.compare(a.name, b.name))
      info.dirBlocks = splitDir(entries)
      info.dataSize = (info.dirBlocks.length - 1) * BLOCK_SIZE + info.dirBlocks[info.dirBlocks.length - 1]!.used
    } else if (node.kind === 'symlink') {
      info.dataSize = size
    }
    const dataSize = node.kind === 'file' ? node.size : info.dataSize
    info.extended = node.uid > 0xffff || node.gid > 0xffff || info.nlink > 0xffff || dataSize > 0xffffffff ||
      node.mtime !== epoch || node.mtimeNsec !== fixedNsec
    if (node.uid < 0 || node.gid < 0 || node.uid > 0xffffffff || node.gid > 0xffffffff) throw new ErofsWriteError(`uid/gid out of range: ${node.uid}/${node.gid}`)
    const head = (info.extended ? F.EROFS_INODE_EXTENDED_SIZE : F.EROFS_INODE_COMPACT_SIZE) + info.xattrSize
    if (node.kind === 'file') {
      if (node.size === 0) {
        info.layout = F.EROFS_INODE_FLAT_PLAIN
        info.total = head
      } else {
        const n = Math.ceil(node.size / opts.chunkSize)
        if (node.chunks.length !== n) throw new ErofsWriteError(`file of ${node.size} bytes has ${node.chunks.length} chunks, expected ${n}`)
        info.layout = F.EROFS_INODE_CHUNK_BASED
        info.total = align(head, F.EROFS_CHUNK_INDEX_SIZE) + n * F.EROFS_CHUNK_INDEX_SIZE
      }
    } else if (node.kind === 'dir' || node.kind === 'symlink') {
      const tail = info.dataSize % BLOCK_SIZE
      if (tail !== 0 && head + tail <= BLOCK_SIZE) {
        info.layout = F.EROFS_INODE_FLAT_INLINE
        info.dataBlocks = Math.floor(info.dataSize / BLOCK_SIZE)
        info.total = head + tail
      } else {
        info.layout = F.EROFS_INODE_FLAT_PLAIN
        info.dataBlocks = Math.ceil(info.dataSize / BLOCK_SIZE)
        info.total = head
      }
    } else {
      info.total = head
    }
  }

  // 5. Place inodes: nid = offset / 32 (meta_blkaddr = 0).
  let off = align(F.EROFS_SUPER_OFFSET + F.EROFS_SB_SIZE + F.EROFS_DEVT_SLOT_SIZE * opts.devices.length, 1 << F.EROFS_ISLOTBITS)
  for (const info of order) {
    const head = info.layout === F.EROFS_INODE_CHUNK_BASED
      ? (info.extended ? 64 : 32) + info.xattrSize
      : info.total
    if ((off % BLOCK_SIZE) + head > BLOCK_SIZE && head <= BLOCK_SIZE) off = align(off, BLOCK_SIZE)
    info.nid = off >> F.EROFS_ISLOTBITS
    off = align(off + info.total, 1 << F.EROFS_ISLOTBITS)
  }
  const rootNid = infos.get(root)!.nid
  if (rootNid > 0xffff) throw new ErofsWriteError('root nid does not fit 16 bits')
  let blk = Math.ceil(off / BLOCK_SIZE)
  let xattrBlkaddr = 0
  if (sharedBytes > 0) {
    xattrBlkaddr = blk
    blk += Math.ceil(sharedBytes / BLOCK_SIZE)
  }
  for (const info of order) {
    if (info.dataBlocks > 0) {
      info.blkaddr = blk
      blk += info.dataBlocks
    }
  }
  const totalBlocks = blk
  if (totalBlocks > 0xffffffff) throw new ErofsWriteError('image too large')

  // 6. Serialize.
  const img = Buffer.alloc(totalBlocks * BLOCK_SIZE)
  const sb = F.EROFS_SUPER_OFFSET
  const hasChunks = order.some(i => i.layout === F.EROFS_INODE_CHUNK_BASED)
  img.writeUInt32LE(F.EROFS_SUPER_MAGIC, sb + 0)
  img.writeUInt32LE(0, sb + 4)
  img.writeUInt32LE(F.EROFS_FEATURE_COMPAT_MTIME, sb + 8)
  img.writeUInt8(BLOCK_BITS, sb + 12)
  img.writeUInt8(0, sb + 13)
  img.writeUInt16LE(rootNid, sb + 14)
  img.writeBigUInt64LE(BigInt(order.length), sb + 16)
  img.writeBigUInt64LE(BigInt(epoch), sb + 24)
  img.writeUInt32LE(fixedNsec, sb + 32)
  img.writeUInt32LE(totalBlocks, sb + 36)
  img.writeUInt32LE(0, sb + 40) // meta_blkaddr
  img.writeUInt32LE(xattrBlkaddr, sb + 44)
  if (opts.uuid !== undefined) Buffer.from(opts.uuid).copy(img, sb + 48, 0, 16)
  if (opts.volumeName !== undefined) Buffer.from(opts.volumeName, 'utf8').subarray(0, 16).copy(img, sb + 64)
  img.writeUInt32LE((hasChunks ? F.EROFS_FEATURE_INCOMPAT_CHUNKED_FILE : 0) |
    (opts.devices.length > 0 ? F.EROFS_FEATURE_INCOMPAT_DEVICE_TABLE : 0), sb + 80)
  img.writeUInt16LE(opts.devices.length, sb + 86)
  img.writeUInt16LE(opts.devices.length > 0 ? F.EROFS_DEVT_SLOTOFF : 0, sb + 88)
  opts.devices.forEach((d, i) => {
    const p = F.EROFS_DEVT_SLOTOFF * F.EROFS_DEVT_SLOT_SIZE + i * F.EROFS_DEVT_SLOT_SIZE
    const tag = Buffer.from(d.tag, 'latin1')
    if (tag.length > 64) throw new ErofsWriteError('device tag longer than 64 bytes')
    tag.copy(img, p)
    img.writeUInt32LE(d.blocks % 2 ** 32, p + 64)
    img.writeUInt32LE(0, p + 68) // uniaddr: chunk indexes carry the device id, no flat mapping
    img.writeUInt32LE(Math.floor(d.blocks / 2 ** 32), p + 72)
  })

  let sp = xattrBlkaddr * BLOCK_SIZE
  for (const x of sharedList) { writeXattr(img, sp, x); sp += x.size }

  const chunkFormat = F.EROFS_CHUNK_FORMAT_INDEXES | (chunkBits - BLOCK_BITS)
  for (const info of order) {
    const node = info.node
    const p = info.nid << F.EROFS_ISLOTBITS
    const fmt = (info.extended ? 1 : 0) | (info.layout << F.EROFS_I_DATALAYOUT_BIT)
    const xattrIcount = info.xattrSize === 0 ? 0 : 1 + (info.xattrSize - F.EROFS_XATTR_IBODY_HEADER_SIZE) / 4
    const mode = MODE_TYPE[node.kind] | (node.mode & 0o7777)
    const size = node.kind === 'file' ? node.size : info.dataSize
    let iu = 0
    if (node.kind === 'char' || node.kind === 'block') iu = F.encodeDev(node.major, node.minor)
    else if (info.layout === F.EROFS_INODE_CHUNK_BASED) iu = chunkFormat
    else if (info.dataBlocks > 0) iu = info.blkaddr
    img.writeUInt16LE(fmt, p)
    img.writeUInt16LE(xattrIcount, p + 2)
    img.writeUInt16LE(mode, p + 4)
    if (info.extended) {
      img.writeUInt16LE(0, p + 6)
      img.writeBigUInt64LE(BigInt(size), p + 8)
      img.writeUInt32LE(iu, p + 16)
      img.writeUInt32LE(info.ino, p + 20)
      img.writeUInt32LE(node.uid, p + 24)
      img.writeUInt32LE(node.gid, p + 28)
      img.writeBigUInt64LE(BigInt.asUintN(64, BigInt(node.mtime)), p + 32)
      img.writeUInt32LE(node.mtimeNsec, p + 40)
      img.writeUInt32LE(info.nlink, p + 44)
    } else {
      img.writeUInt16LE(info.nlink, p + 6)
      img.writeUInt32LE(size, p + 8)
      img.writeUInt32LE(0, p + 12) // i_mtime: epoch + 0
      img.writeUInt32LE(iu, p + 16)
      img.writeUInt32LE(info.ino, p + 20)
      img.writeUInt16LE(node.uid, p + 24)
      img.writeUInt16LE(node.gid, p + 26)
    }
    let q = p + (info.extended ? 64 : 32)
    if (info.xattrSize > 0) {
      img.writeUInt32LE(0, q) // h_name_filter (XATTR_FILTER not enabled)
      img.writeUInt8(info.shared.length, q + 4)
      q += F.EROFS_XATTR_IBODY_HEADER_SIZE
      for (const id of info.shared) { img.writeUInt32LE(id, q); q += 4 }
      for (const x of info.inline) { writeXattr(img, q, x); q += x.size }
    }
    if (node.kind === 'file' && info.layout === F.EROFS_INODE_CHUNK_BASED) {
      q = align(q, F.EROFS_CHUNK_INDEX_SIZE)
      for (const c of node.chunks) {
        if (c === null) {
          img.writeUInt16LE(0, q)
          img.writeUInt16LE(0, q + 2)
          img.writeUInt32LE(F.EROFS_NULL_ADDR, q + 4)
        } else {
          if (c.device < 1 || c.device > opts.devices.length) throw new ErofsWriteError(`chunk refers to device ${c.device}, image has ${opts.devices.length}`)
          if (c.blkaddr < 0 || c.blkaddr >= F.EROFS_NULL_ADDR) throw new ErofsWriteError(`chunk block address ${c.blkaddr} out of range`)
          img.writeUInt16LE(0, q)
          img.writeUInt16LE(c.device, q + 2)
          img.writeUInt32LE(c.blkaddr, q + 4)
        }
        q += F.EROFS_CHUNK_INDEX_SIZE
      }
    } else if (node.kind === 'dir' || node.kind === 'symlink') {
      const data = node.kind === 'symlink' ? node.target : encodeDir(info.dirBlocks!, infos)
      const full = info.layout === F.EROFS_INODE_FLAT_INLINE ? info.dataBlocks * BLOCK_SIZE : data.length
      if (info.dataBlocks > 0) data.copy(img, info.blkaddr * BLOCK_SIZE, 0, full)
      if (info.layout === F.EROFS_INODE_FLAT_INLINE) data.copy(img, q, full)
    }
  }
  return { image: img, rootNid, inodes: order.length, blocks: totalBlocks }
}

function encodeDir (blocks: DirBlock[], infos: Map<Node, InodeInfo>): Buffer {
  const out = Buffer.alloc((blocks.length - 1) * BLOCK_SIZE + blocks[blocks.length - 1]!.used)
  blocks.forEach((b, i) => {
    const base = i * BLOCK_SIZE
    let nameoff = b.names.length * F.EROFS_DIRENT_SIZE
    b.names.forEach((e, j) => {
      const d = base + j * F.EROFS_DIRENT_SIZE
      out.writeBigUInt64LE(BigInt(infos.get(e.node)!.nid), d)
      out.writeUInt16LE(nameoff, d + 8)
      out.writeUInt8(FILE_TYPE[e.node.kind], d + 10)
      e.name.copy(out, base + nameoff)
      nameoff += e.name.length
    })
  })
  return out
}
