/**
 * Streaming tar reader: ustar, pax (local and global extended headers, SCHILY/LIBARCHIVE xattrs),
 * GNU long names and long links ('L'/'K'), base-256 numbers. Names and link targets are byte strings
 * (see tree.ts). Member data is handed to the caller as slices of the stream; nothing is buffered
 * beyond one read.
 *
 * Header-only types (hardlink, symlink, char, block, dir, fifo) carry no data whatever their size
 * field says (as Go's archive/tar and containerd read them).
 */
import { MAX_EXTENDED_HEADER } from '../constants.js'
import { InvalidTarError, LayerTooLargeError, TruncatedTarError, UnsupportedTarError } from '../errors.js'
import type { ByteReader } from './stream.js'

export type TarType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo'

export interface TarEntry {
  type: TarType
  /** Raw member name (byte string), not normalized. */
  path: string
  /** Link target (byte string) of symlinks and hardlinks. */
  linkpath: string
  mode: number
  uid: number
  gid: number
  size: number
  mtime: number
  mtimeNsec: number
  devmajor: number
  devminor: number
  xattrs: Map<string, Buffer>
  /** Sparse members: `size` is the stored data; the file is `sparse.size` bytes with data at `sparse.map`. */
  sparse?: { size: number, map: Array<{ offset: number, length: number }> }
  /** GNU.sparse.* pax records, resolved by readTar. */
  paxSparse?: Map<string, string>
}

export interface ReadTarOptions {
  maxEntries: number
  /** Largest member size accepted. */
  maxSize: number
}

const BLOCK = 512

function cstr (b: Buffer, start: number, len: number): string {
  const s = b.subarray(start, start + len)
  const z = s.indexOf(0)
  return (z === -1 ? s : s.subarray(0, z)).toString('latin1')
}

/** Parses a numeric header field: octal text, or GNU base-256 when the high bit is set. */
export function parseNumber (b: Buffer, start: number, len: number, field: string): number {
  const f = b.subarray(start, start + len)
  if (f.length > 0 && (f[0]! & 0x80) !== 0) {
    const negative = (f[0]! & 0x40) !== 0
    let v = BigInt(f[0]! & 0x7f) - (negative ? 0x80n : 0n)
    for (let i = 1; i < f.length; i++) v = (v << 8n) + BigInt(f[i]!)
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) throw new InvalidTarError(`tar header field ${field} out of range`)
    return Number(v)
  }
  // octal digits, optionally surrounded by spaces/NULs
  let i = 0
  let end = f.length
  while (i < end && (f[i] === 0x20 || f[i] === 0)) i++
  while (end > i && (f[end - 1] === 0x20 || f[end - 1] === 0)) end--
  let v = 0
  for (let j = i; j < end; j++) {
    const c = f[j]!
    if (c < 0x30 || c > 0x37) throw new InvalidTarError(`tar header field ${field} is not octal: ${JSON.stringify(f.toString('latin1', i, end))}`)
    v = v * 8 + (c - 0x30)
  }
  if (!Number.isSafeInteger(v)) throw new InvalidTarError(`tar header field ${field} out of range`)
  return v
}

function checksumOk (h: Buffer): boolean {
  const stored = parseNumber(h, 148, 8, 'chksum')
  let unsigned = 0
  let signed = 0
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : h[i]!
    unsigned += c
    signed += c > 127 ? c - 256 : c
  }
  return stored === unsigned || stored === signed
}

function parseDecimal (v: string, key: string): number {
  if (!/^\d+$/.test(v)) throw new InvalidTarError(`pax ${key} is not a decimal number: ${JSON.stringify(v)}`)
  const n = Number(v)
  if (!Number.isSafeInteger(n)) throw new InvalidTarError(`pax ${key} out of range`)
  return n
}

function parseTime (v: string, key: string): { sec: number, nsec: number } {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(v)
  if (m === null) throw new InvalidTarError(`pax ${key} is not a time: ${JSON.stringify(v)}`)
  let sec = Number(m[2])
  let nsec = Number(((m[3] ?? '') + '000000000').slice(0, 9))
  if (m[1] === '-') {
    sec = -sec
    if (nsec > 0) { sec -= 1; nsec = 1e9 - nsec }
  }
  if (!Number.isSafeInteger(sec)) throw new InvalidTarError(`pax ${key} out of range`)
  return { sec, nsec }
}

/** Parses pax records ("LEN KEY=VALUE\n"); values stay raw bytes. */
export function parsePax (data: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>()
  let p = 0
  while (p < data.length) {
    if (data[p] === 0) break // some writers pad with NULs
    const sp = data.indexOf(0x20, p)
    if (sp === -1) throw new InvalidTarError('pax record without length')
    const lenStr = data.subarray(p, sp).toString('latin1')
    if (!/^\d+$/.test(lenStr)) throw new InvalidTarError(`pax record length is not a number: ${JSON.stringify(lenStr)}`)
    const len = Number(lenStr)
    if (len <= sp - p + 1 || p + len > data.length || data[p + len - 1] !== 0x0a) throw new InvalidTarError('pax record length does not match its content')
    const rec = data.subarray(sp + 1, p + len - 1)
    const eq = rec.indexOf(0x3d)
    if (eq <= 0) throw new InvalidTarError('pax record without key')
    out.set(rec.subarray(0, eq).toString('utf8'), rec.subarray(eq + 1))
    p += len
  }
  return out
}

function applyPax (e: TarEntry, pax: Map<string, Buffer>): void {
  for (const [key, raw] of pax) {
    const v = raw.toString('latin1')
    switch (key) {
      case 'path': e.path = v; break
      case 'linkpath': e.linkpath = v; break
      case 'size': e.size = parseDecimal(v, key); break
      case 'uid': e.uid = parseDecimal(v, key); break
      case 'gid': e.gid = parseDecimal(v, key); break
      case 'mtime': { const t = parseTime(v, key); e.mtime = t.sec; e.mtimeNsec = t.nsec; break }
      case 'SCHILY.devmajor': e.devmajor = parseDecimal(v, key); break
      case 'SCHILY.devminor': e.devminor = parseDecimal(v, key); break
      default:
        if (key.startsWith('SCHILY.xattr.')) {
          e.xattrs.set(Buffer.from(key.slice('SCHILY.xattr.'.length), 'utf8').toString('latin1'), Buffer.from(raw))
        } else if (key.startsWith('LIBARCHIVE.xattr.')) {
          const name = decodeURIComponent(key.slice('LIBARCHIVE.xattr.'.length))
          e.xattrs.set(Buffer.from(name, 'utf8').toString('latin1'), Buffer.from(v, 'base64'))
        } else if (key.startsWith('GNU.sparse.')) {
          (e.paxSparse ??= new Map()).set(key.slice('GNU.sparse.'.length), v)
        }
      // atime, ctime, uname, gname, comment, charset, hdrcharset: not stored
    }
  }
}

/**
 * Reads members until the end-of-archive block (or the end of the stream). For each member calls
 * `onEntry` with its header and its data slices; data not consumed by the callback is skipped.
 * Returns after the end-of-archive marker; the caller drains the rest of the stream.
 */
export async function readTar (
  r: ByteReader,
  opts: ReadTarOptions,
  onEntry: (e: TarEntry, data: AsyncIterable<Buffer>) => Promise<void>
): Promise<{ entries: number }> {
  let globalPax = new Map<string, Buffer>()
  let localPax: Map<string, Buffer> | undefined
  let longName: string | undefined
  let longLink: string | undefined
  let entries = 0
  for (;;) {
    const h = await r.readUpTo(BLOCK)
    if (h.length === 0) {
      // end of stream without end-of-archive marker: accepted (GNU tar does too) if no header is pending
      if (localPax !== undefined || longName !== undefined || longLink !== undefined) throw new TruncatedTarError('tar stream ended after an extended header')
      return { entries }
    }
    if (h.length < BLOCK) throw new TruncatedTarError(`tar stream ended inside a header at byte ${r.offset - h.length}`)
    if (h.every(c => c === 0)) {
      // end of archive: two zero blocks (or one at the end of the stream). A lone zero block followed by
      // a header would hide members from some readers (GNU tar stops there, Go's archive/tar errors): refuse.
      const next = await r.readUpTo(BLOCK)
      if (next.length > 0 && !next.every(c => c === 0)) throw new InvalidTarError(`a lone zero block at byte ${r.offset - next.length - BLOCK} is followed by more data`)
      return { entries }
    }
    if (!checksumOk(h)) throw new InvalidTarError(`tar header checksum mismatch at byte ${r.offset - BLOCK}`)
    const typeflag = String.fromCharCode(h[156]!)
    const size = parseNumber(h, 124, 12, 'size')
    if (size < 0) throw new InvalidTarError('negative member size')
    const padded = Math.ceil(size / BLOCK) * BLOCK

    if (typeflag === 'x' || typeflag === 'g' || typeflag === 'X' || typeflag === 'L' || typeflag === 'K') {
      if (size > MAX_EXTENDED_HEADER) throw new LayerTooLargeError(`extended header of ${size} bytes exceeds ${MAX_EXTENDED_HEADER}`)
      const data = Buffer.from(await r.readExact(size, 'an extended header'))
      await r.skip(padded - size, 'padding')
      if (typeflag === 'L' || typeflag === 'K') {
        const z = data.indexOf(0)
        const s = (z === -1 ? data : data.subarray(0, z)).toString('latin1')
        if (typeflag === 'L') longName = s; else longLink = s
      } else if (typeflag === 'g') {
        globalPax = new Map([...globalPax, ...parsePax(data)])
      } else {
        localPax = new Map([...(localPax ?? []), ...parsePax(data)])
      }
      continue
    }

    const magic = h.subarray(257, 263).toString('latin1')
    const ustar = magic === 'ustar\0'
    let name = cstr(h, 0, 100)
    if (ustar) {
      const prefix = cstr(h, 345, 155)
      if (prefix !== '') name = `${prefix}/${name}`
    }
    const e: TarEntry = {
      type: 'file',
      path: name,
      linkpath: cstr(h, 157, 100),
      mode: parseNumber(h, 100, 8, 'mode') & 0o7777,
      uid: parseNumber(h, 108, 8, 'uid'),
      gid: parseNumber(h, 116, 8, 'gid'),
      size,
      mtime: parseNumber(h, 136, 12, 'mtime'),
      mtimeNsec: 0,
      devmajor: 0,
      devminor: 0,
      xattrs: new Map()
    }
    if (magic.startsWith('ustar')) {
      e.devmajor = parseNumber(h, 329, 8, 'devmajor')
      e.devminor = parseNumber(h, 337, 8, 'devminor')
    }
    applyPax(e, globalPax)
    if (localPax !== undefined) applyPax(e, localPax)
    if (longName !== undefined) e.path = longName
    if (longLink !== undefined) e.linkpath = longLink
    localPax = undefined
    longName = undefined
    longLink = undefined

    switch (typeflag) {
      case '0': case '\0': case '7': e.type = 'file'; break
      case '1': e.type = 'hardlink'; break
      case '2': e.type = 'symlink'; break
      case '3': e.type = 'char'; break
      case '4': e.type = 'block'; break
      case '5': e.type = 'dir'; break
      case '6': e.type = 'fifo'; break
      case 'D': e.type = 'dir'; break // GNU dumpdir: a directory whose data lists its contents
      case 'S': e.type = 'file'; e.sparse = await oldGnuSparse(h, r); break
      case 'M': throw new UnsupportedTarError('multi-volume tar members are not supported')
      case 'V': // volume label: no member
        await r.skip(Math.ceil(e.size / BLOCK) * BLOCK, 'a volume label')
        continue
      default:
        // POSIX: unknown types are read as regular files (GNU tar does the same)
        e.type = 'file'
    }
    if (typeflag === '\0' && e.path.endsWith('/')) e.type = 'dir' // old tars mark dirs by a trailing slash
    if (e.type !== 'file') {
      // header-only members carry no data; a GNU dumpdir's listing is skipped
      const skip = typeflag === 'D' ? Math.ceil(e.size / BLOCK) * BLOCK : 0
      e.size = 0
      if (skip > 0) await r.skip(skip, 'a dumpdir')
    }
    const total = e.size
    if (e.paxSparse !== undefined && e.type === 'file') await paxSparse(e, r)
    if (e.sparse !== undefined) checkSparse(e, opts.maxSize)
    if (e.size > opts.maxSize) throw new LayerTooLargeError(`member ${JSON.stringify(e.path)} of ${e.size} bytes exceeds the cap of ${opts.maxSize}`)
    if (++entries > opts.maxEntries) throw new LayerTooLargeError(`layer has more than ${opts.maxEntries} members`)
    const dataSize = e.size
    let consumed = false
    const data = r.readSlices(dataSize, `the data of ${JSON.stringify(e.path)}`)
    const tracked: AsyncIterable<Buffer> = {
      [Symbol.asyncIterator]: () => { consumed = true; return data[Symbol.asyncIterator]() }
    }
    await onEntry(e, tracked)
    if (!consumed) {
      for await (const _ of data) { /* skip */ }
    }
    await r.skip(Math.ceil(total / BLOCK) * BLOCK - total, 'padding')
  }
}

const MAX_SPARSE_SEGMENTS = 1_000_000

/** Old GNU sparse member ('S'): map in the header and in extension blocks, real size at 483. */
async function oldGnuSparse (h: Buffer, r: ByteReader): Promise<{ size: number, map: Array<{ offset: number, length: number }> }> {
  const map: Array<{ offset: number, length: number }> = []
  const take = (b: Buffer, at: number, n: number): void => {
    for (let i = 0; i < n; i++) {
      const p = at + i * 24
      if (b[p] === 0) return
      map.push({ offset: parseNumber(b, p, 12, 'sparse offset'), length: parseNumber(b, p + 12, 12, 'sparse numbytes') })
    }
  }
  take(h, 386, 4)
  let extended = h[482] !== 0
  const size = parseNumber(h, 483, 12, 'realsize')
  while (extended) {
    const x = await r.readExact(BLOCK, 'a sparse extension header')
    take(x, 0, 21)
    extended = x[504] !== 0
    if (map.length > MAX_SPARSE_SEGMENTS) throw new LayerTooLargeError('sparse map too long')
  }
  return { size, map }
}

/** PAX sparse formats 0.1 (GNU.sparse.map) and 1.0 (map at the start of the data). */
async function paxSparse (e: TarEntry, r: ByteReader): Promise<void> {
  const ps = e.paxSparse!
  const major = ps.get('major')
  const minor = ps.get('minor')
  const name = ps.get('name')
  if (name !== undefined) e.path = name
  if (major === '1' && minor === '0') {
    const realSize = parseDecimal(ps.get('realsize') ?? '', 'GNU.sparse.realsize')
    const nums: number[] = []
    let want = -1
    let text = ''
    let consumed = 0
    while (want === -1 || nums.length < want) {
      if (consumed + BLOCK > e.size) throw new InvalidTarError(`sparse map of ${JSON.stringify(e.path)} runs past its data`)
      text += (await r.readExact(BLOCK, 'a sparse map')).toString('latin1')
      consumed += BLOCK
      const lines = text.split('\n')
      text = lines.pop()!
      for (const l of lines) {
        const n = parseDecimal(l, 'sparse map entry')
        if (want === -1) {
          if (n > MAX_SPARSE_SEGMENTS) throw new LayerTooLargeError('sparse map too long')
          want = 2 * n
        } else {
          nums.push(n)
        }
        if (nums.length >= want && want !== -1) break
      }
    }
    const map: Array<{ offset: number, length: number }> = []
    for (let i = 0; i < want; i += 2) map.push({ offset: nums[i]!, length: nums[i + 1]! })
    e.sparse = { size: realSize, map }
    e.size -= consumed
  } else if (ps.has('map')) {
    const nums = ps.get('map')! === '' ? [] : ps.get('map')!.split(',').map(v => parseDecimal(v, 'GNU.sparse.map'))
    if (nums.length % 2 !== 0) throw new InvalidTarError('GNU.sparse.map has an odd number of values')
    const map: Array<{ offset: number, length: number }> = []
    for (let i = 0; i < nums.length; i += 2) map.push({ offset: nums[i]!, length: nums[i + 1]! })
    e.sparse = { size: parseDecimal(ps.get('size') ?? ps.get('realsize') ?? '', 'GNU.sparse.size'), map }
  } else {
    throw new UnsupportedTarError(`sparse member ${JSON.stringify(e.path)}: pax sparse format ${major ?? '0'}.${minor ?? '0'} is not supported (1.0 and 0.1 are)`)
  }
}

function checkSparse (e: TarEntry, maxSize: number): void {
  const sp = e.sparse!
  if (sp.size > maxSize) throw new LayerTooLargeError(`sparse member ${JSON.stringify(e.path)} of ${sp.size} bytes exceeds the cap of ${maxSize}`)
  let end = 0
  let data = 0
  for (const s of sp.map) {
    if (s.offset < end || s.offset + s.length > sp.size) throw new InvalidTarError(`sparse map of ${JSON.stringify(e.path)} is out of order or past the file size`)
    end = s.offset + s.length
    data += s.length
  }
  if (data !== e.size) throw new InvalidTarError(`sparse map of ${JSON.stringify(e.path)} lists ${data} bytes, the member stores ${e.size}`)
}
