/**
 * A strict reader of the EROFS images this package writes (uncompressed: flat plain, flat inline and
 * chunk-based inodes; compact and extended inodes; inline and shared xattrs; device table). Every fault
 * is a CorruptImageError whose message names the structure (superblock, inode nid N, dirent, chunk index).
 */
import { BLOCK_SIZE, BLOCK_BITS } from '../constants.js'
import { CorruptImageError } from '../errors.js'
import type { NodeKind } from '../tree.js'
import * as F from './format.js'

export interface ErofsSuper {
  featureCompat: number
  featureIncompat: number
  rootNid: number
  inos: number
  epoch: number
  fixedNsec: number
  blocks: number
  metaBlkaddr: number
  xattrBlkaddr: number
  uuid: Buffer
  devices: Array<{ tag: string, blocks: number }>
}

export interface ErofsInode {
  nid: number
  kind: NodeKind
  /** Permission bits (mode & 0o7777). */
  mode: number
  extended: boolean
  layout: number
  size: number
  uid: number
  gid: number
  mtime: number
  mtimeNsec: number
  nlink: number
  xattrs: Map<string, Buffer>
  /** Chunk-based files: chunk size and one entry per chunk (null = hole). */
  chunkSize?: number
  chunks?: Array<{ device: number, blkaddr: number } | null>
  major?: number
  minor?: number
  /** Directory and symlink bytes. */
  data?: Buffer
}

export interface ErofsDirent { name: string, nid: number, fileType: number }

const KIND_OF: Record<number, NodeKind> = {
  [F.S_IFREG]: 'file', [F.S_IFDIR]: 'dir', [F.S_IFLNK]: 'symlink', [F.S_IFCHR]: 'char', [F.S_IFBLK]: 'block', [F.S_IFIFO]: 'fifo', [F.S_IFSOCK]: 'socket'
}
const FT_OF: Record<NodeKind, number> = {
  file: F.EROFS_FT_REG_FILE, dir: F.EROFS_FT_DIR, symlink: F.EROFS_FT_SYMLINK, char: F.EROFS_FT_CHRDEV, block: F.EROFS_FT_BLKDEV, fifo: F.EROFS_FT_FIFO, socket: F.EROFS_FT_SOCK
}
const PREFIX_OF = new Map<number, string>(F.XATTR_PREFIXES.map(([i, p]) => [i, p]))

function corrupt (msg: string): never {
  throw new CorruptImageError(msg)
}

export class ErofsReader {
  readonly img: Buffer
  readonly sb: ErofsSuper

  constructor (img: Buffer) {
    this.img = img
    this.sb = this.readSuper()
  }

  private readSuper (): ErofsSuper {
    const img = this.img
    const o = F.EROFS_SUPER_OFFSET
    if (img.length < o + F.EROFS_SB_SIZE) corrupt('superblock: image shorter than 1152 bytes')
    if (img.readUInt32LE(o) !== F.EROFS_SUPER_MAGIC) corrupt('superblock: bad magic')
    if (img.readUInt8(o + 12) !== BLOCK_BITS) corrupt(`superblock: block size 2^${img.readUInt8(o + 12)} is not 4096`)
    if (img.readUInt8(o + 13) !== 0) corrupt('superblock: extension slots are not supported')
    const featureCompat = img.readUInt32LE(o + 8)
    const featureIncompat = img.readUInt32LE(o + 80)
    const known = F.EROFS_FEATURE_INCOMPAT_CHUNKED_FILE | F.EROFS_FEATURE_INCOMPAT_DEVICE_TABLE
    if ((featureIncompat & ~known) !== 0) corrupt(`superblock: unsupported incompat features 0x${featureIncompat.toString(16)}`)
    const blocks = img.readUInt32LE(o + 36)
    if (blocks * BLOCK_SIZE > img.length) corrupt(`superblock: ${blocks} blocks but the image has ${img.length} bytes`)
    if (img.readUInt8(o + 90) !== 0) corrupt('superblock: dirblkbits must be 0')
    const extra = img.readUInt16LE(o + 86)
    const slotoff = img.readUInt16LE(o + 88)
    const devices: ErofsSuper['devices'] = []
    if (extra > 0) {
      if ((featureIncompat & F.EROFS_FEATURE_INCOMPAT_DEVICE_TABLE) === 0) corrupt('superblock: extra devices without the device table feature')
      for (let i = 0; i < extra; i++) {
        const p = slotoff * F.EROFS_DEVT_SLOT_SIZE + i * F.EROFS_DEVT_SLOT_SIZE
        if (p + F.EROFS_DEVT_SLOT_SIZE > img.length) corrupt(`device table: slot ${i + 1} past the end of the image`)
        const tagBytes = img.subarray(p, p + 64)
        const z = tagBytes.indexOf(0)
        devices.push({ tag: (z === -1 ? tagBytes : tagBytes.subarray(0, z)).toString('latin1'), blocks: img.readUInt32LE(p + 64) + img.readUInt32LE(p + 72) * 2 ** 32 })
      }
    }
    return {
      featureCompat,
      featureIncompat,
      rootNid: img.readUInt16LE(o + 14),
      inos: Number(img.readBigUInt64LE(o + 16)),
      epoch: Number(BigInt.asIntN(64, img.readBigUInt64LE(o + 24))),
      fixedNsec: img.readUInt32LE(o + 32),
      blocks,
      metaBlkaddr: img.readUInt32LE(o + 40),
      xattrBlkaddr: img.readUInt32LE(o + 44),
      uuid: Buffer.from(img.subarray(o + 48, o + 64)),
      devices
    }
  }

  private metaEnd (): number {
    return this.sb.blocks * BLOCK_SIZE
  }

  private xattrEntry (p: number, where: string): { name: string, value: Buffer, size: number } {
    if (p + 4 > this.metaEnd()) corrupt(`${where}: xattr entry past the end of the image`)
    const nameLen = this.img.readUInt8(p)
    const index = this.img.readUInt8(p + 1)
    const valueSize = this.img.readUInt16LE(p + 2)
    const prefix = PREFIX_OF.get(index)
    if (prefix === undefined) corrupt(`${where}: unknown xattr name index ${index}`)
    const end = p + 4 + nameLen + valueSize
    if (end > this.metaEnd()) corrupt(`${where}: xattr entry past the end of the image`)
    const name = prefix + this.img.toString('latin1', p + 4, p + 4 + nameLen)
    return { name, value: Buffer.from(this.img.subarray(p + 4 + nameLen, end)), size: Math.ceil((4 + nameLen + valueSize) / 4) * 4 }
  }

  inode (nid: number): ErofsInode {
    const img = this.img
    const where = `inode nid ${nid}`
    const p = this.sb.metaBlkaddr * BLOCK_SIZE + nid * 32
    if (p + 32 > this.metaEnd()) corrupt(`${where}: past the end of the metadata`)
    const fmt = img.readUInt16LE(p)
    if ((fmt & ~0x1f) !== 0) corrupt(`${where}: unknown i_format bits 0x${fmt.toString(16)}`)
    const extended = (fmt & 1) === 1
    const layout = (fmt >> 1) & 7
    if (![F.EROFS_INODE_FLAT_PLAIN, F.EROFS_INODE_FLAT_INLINE, F.EROFS_INODE_CHUNK_BASED].includes(layout)) corrupt(`${where}: unsupported data layout ${layout}`)
    const isize = extended ? 64 : 32
    if (p + isize > this.metaEnd()) corrupt(`${where}: past the end of the metadata`)
    const icount = img.readUInt16LE(p + 2)
    const rawMode = img.readUInt16LE(p + 4)
    const kind = KIND_OF[rawMode & F.S_IFMT]
    if (kind === undefined) corrupt(`${where}: bogus mode 0${rawMode.toString(8)}`)
    let size: number, iu: number, uid: number, gid: number, mtime: number, mtimeNsec: number, nlink: number
    if (extended) {
      if (img.readUInt16LE(p + 6) !== 0) corrupt(`${where}: 48-bit block addresses are not supported`)
      size = Number(img.readBigUInt64LE(p + 8))
      iu = img.readUInt32LE(p + 16)
      uid = img.readUInt32LE(p + 24)
      gid = img.readUInt32LE(p + 28)
      mtime = Number(BigInt.asIntN(64, img.readBigUInt64LE(p + 32)))
      mtimeNsec = img.readUInt32LE(p + 40)
      nlink = img.readUInt32LE(p + 44)
    } else {
      if ((fmt & (1 << F.EROFS_I_NLINK_1_BIT)) !== 0 && kind !== 'dir') corrupt(`${where}: NLINK_1 compact inodes are not supported`)
      nlink = img.readUInt16LE(p + 6)
      size = img.readUInt32LE(p + 8)
      mtime = this.sb.epoch + img.readUInt32LE(p + 12)
      mtimeNsec = this.sb.fixedNsec
      iu = img.readUInt32LE(p + 16)
      uid = img.readUInt16LE(p + 24)
      gid = img.readUInt16LE(p + 26)
    }
    if (mtimeNsec > 999_999_999) corrupt(`${where}: nanoseconds out of range`)
    const node: ErofsInode = { nid, kind, mode: rawMode & 0o7777, extended, layout, size, uid, gid, mtime, mtimeNsec, nlink, xattrs: new Map() }

    // xattrs
    let q = p + isize
    if (icount > 0) {
      const xsize = F.EROFS_XATTR_IBODY_HEADER_SIZE + 4 * (icount - 1)
      const end = q + xsize
      if (end > this.metaEnd()) corrupt(`${where}: xattrs past the end of the metadata`)
      const shared = img.readUInt8(q + 4)
      let r = q + F.EROFS_XATTR_IBODY_HEADER_SIZE
      if (r + shared * 4 > end) corrupt(`${where}: shared xattr ids past the xattr body`)
      for (let i = 0; i < shared; i++) {
        const id = img.readUInt32LE(r + i * 4)
        const x = this.xattrEntry(this.sb.xattrBlkaddr * BLOCK_SIZE + id * 4, `${where} shared xattr ${id}`)
        node.xattrs.set(x.name, x.value)
      }
      r += shared * 4
      while (r < end) {
        const x = this.xattrEntry(r, `${where} inline xattr`)
        if (r + x.size > end) corrupt(`${where}: inline xattr crosses the end of the xattr body`)
        node.xattrs.set(x.name, x.value)
        r += x.size
      }
      q = end
    }

    if (kind === 'char' || kind === 'block') {
      const d = F.decodeDev(iu)
      node.major = d.major
      node.minor = d.minor
      return node
    }
    if (kind === 'fifo' || kind === 'socket') return node

    if (layout === F.EROFS_INODE_CHUNK_BASED) {
      if (kind !== 'file') corrupt(`${where}: chunk-based ${kind}`)
      const format = iu & 0xffff
      if ((format & ~(F.EROFS_CHUNK_FORMAT_INDEXES | F.EROFS_CHUNK_FORMAT_BLKBITS_MASK)) !== 0 || (format & F.EROFS_CHUNK_FORMAT_INDEXES) === 0) corrupt(`${where}: unsupported chunk format 0x${format.toString(16)}`)
      const chunkSize = BLOCK_SIZE * 2 ** (format & F.EROFS_CHUNK_FORMAT_BLKBITS_MASK)
      const n = Math.ceil(size / chunkSize)
      let c = Math.ceil(q / 8) * 8
      if (c + n * 8 > this.metaEnd()) corrupt(`${where}: chunk indexes past the end of the metadata`)
      node.chunkSize = chunkSize
      node.chunks = []
      for (let i = 0; i < n; i++, c += 8) {
        const lo = img.readUInt32LE(c + 4)
        const device = img.readUInt16LE(c + 2)
        if (img.readUInt16LE(c) !== 0 && lo !== F.EROFS_NULL_ADDR) corrupt(`${where}: chunk index ${i} uses 48-bit addresses`)
        node.chunks.push(lo === F.EROFS_NULL_ADDR ? null : { device, blkaddr: lo })
      }
      return node
    }
    // flat plain / inline data
    if (kind === 'file' && size > 0) corrupt(`${where}: regular file data outside chunks is not produced by this writer`)
    const blocksFull = layout === F.EROFS_INODE_FLAT_INLINE ? Math.floor(size / BLOCK_SIZE) : Math.ceil(size / BLOCK_SIZE)
    const data = Buffer.alloc(size)
    if (blocksFull > 0) {
      const start = iu * BLOCK_SIZE
      const len = Math.min(size, blocksFull * BLOCK_SIZE)
      if (start + len > this.metaEnd()) corrupt(`${where}: data blocks past the end of the metadata`)
      img.copy(data, 0, start, start + len)
    }
    if (layout === F.EROFS_INODE_FLAT_INLINE) {
      const tail = size - blocksFull * BLOCK_SIZE
      if ((q % BLOCK_SIZE) + tail > BLOCK_SIZE) corrupt(`${where}: inline data crosses a block boundary`)
      if (q + tail > this.metaEnd()) corrupt(`${where}: inline data past the end of the metadata`)
      img.copy(data, blocksFull * BLOCK_SIZE, q, q + tail)
    }
    node.data = data
    return node
  }

  /** Directory entries in on-disk order; checks nameoffs, name lengths and sort order. */
  readDir (dir: ErofsInode): ErofsDirent[] {
    const where = `directory nid ${dir.nid}`
    const data = dir.data ?? corrupt(`${where}: no data`)
    const out: ErofsDirent[] = []
    for (let b = 0; b * BLOCK_SIZE < data.length; b++) {
      const base = b * BLOCK_SIZE
      const max = Math.min(BLOCK_SIZE, data.length - base)
      const nameoff0 = data.readUInt16LE(base + 8)
      if (nameoff0 < F.EROFS_DIRENT_SIZE || nameoff0 >= max || nameoff0 % F.EROFS_DIRENT_SIZE !== 0) corrupt(`${where}: block ${b}: bad first nameoff ${nameoff0}`)
      const n = nameoff0 / F.EROFS_DIRENT_SIZE
      for (let i = 0; i < n; i++) {
        const d = base + i * F.EROFS_DIRENT_SIZE
        const nameoff = data.readUInt16LE(d + 8)
        let end: number
        if (i + 1 < n) {
          end = data.readUInt16LE(d + 20)
        } else {
          const z = data.subarray(base + nameoff, base + max).indexOf(0)
          end = z === -1 ? max : nameoff + z
        }
        if (nameoff < nameoff0 || end > max || end - nameoff < 1 || end - nameoff > F.EROFS_NAME_LEN) corrupt(`${where}: block ${b} dirent ${i}: bad name bounds`)
        const name = data.toString('latin1', base + nameoff, base + end)
        const prev = out[out.length - 1]
        if (prev !== undefined && !(prev.name < name)) corrupt(`${where}: dirents not sorted (${JSON.stringify(prev.name)} before ${JSON.stringify(name)})`)
        out.push({ name, nid: Number(data.readBigUInt64LE(d)), fileType: data.readUInt8(d + 10) })
      }
    }
    return out
  }

  /**
   * Walks the tree from the root (each inode visited once), checking `.`/`..`, file types and
   * directory link counts. Calls `fn` for every path.
   */
  walk (fn: (path: string, inode: ErofsInode) => void): void {
    const seen = new Map<number, ErofsInode>()
    const visit = (path: string, nid: number, parent: number): void => {
      const ino = seen.get(nid) ?? this.inode(nid)
      const first = !seen.has(nid)
      seen.set(nid, ino)
      fn(path, ino)
      if (ino.kind !== 'dir') return
      if (!first) corrupt(`directory nid ${nid} is linked twice`)
      const ents = this.readDir(ino)
      let subdirs = 0
      let dot = false; let dotdot = false
      for (const e of ents) {
        if (e.name === '.') { dot = true; if (e.nid !== nid) corrupt(`directory nid ${nid}: "." points to ${e.nid}`); continue }
        if (e.name === '..') { dotdot = true; if (e.nid !== parent) corrupt(`directory nid ${nid}: ".." points to ${e.nid}, not ${parent}`); continue }
        if (e.name.includes('/')) corrupt(`directory nid ${nid}: name with a slash`)
        const child = seen.get(e.nid) ?? this.inode(e.nid)
        if (FT_OF[child.kind] !== e.fileType) corrupt(`directory nid ${nid}: dirent ${JSON.stringify(e.name)} file type ${e.fileType} does not match inode kind ${child.kind}`)
        if (child.kind === 'dir') subdirs++
        visit(path === '' ? e.name : `${path}/${e.name}`, e.nid, nid)
      }
      if (!dot || !dotdot) corrupt(`directory nid ${nid}: missing "." or ".."`)
      if (ino.nlink !== 2 + subdirs) corrupt(`directory nid ${nid}: nlink ${ino.nlink}, expected ${2 + subdirs}`)
    }
    visit('', this.sb.rootNid, this.sb.rootNid)
  }
}
