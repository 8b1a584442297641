/**
 * writeErofs() directly, for what a tar cannot carry (sockets) and for layout edge cases:
 * images without any device, directories of many blocks, long symlinks (not inline), many shared xattrs.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ErofsWriteError, newDir, writeErofs, type DirNode, type NodeMeta } from '../src/index.js'
import { cleanup, mountErofs, requireTools, run, snapshot, tempDir, umount } from './helpers.js'

const meta = (over: Partial<NodeMeta> = {}): NodeMeta => ({ mode: 0o644, uid: 0, gid: 0, mtime: 1_600_000_000, mtimeNsec: 0, xattrs: new Map(), ...over })

describe('writeErofs', () => {
  let work: string
  beforeAll(async () => {
    await requireTools('fsck.erofs', 'getfattr')
    work = await tempDir('writer')
  })
  afterAll(async () => { if (work !== undefined) await cleanup(work) })

  it('writes sockets, big directories, long symlinks and shared xattrs that fsck and the kernel accept', async () => {
    const root: DirNode = newDir(meta({ mode: 0o755 }))
    root.entries.set('sock', { ...meta({ mode: 0o600 }), kind: 'socket' })
    const big = newDir(meta({ mode: 0o711, uid: 5, gid: 6 }))
    root.entries.set('big', big)
    for (let i = 0; i < 3000; i++) {
      big.entries.set(`file-${String(i).padStart(5, '0')}-${'p'.repeat(i % 50)}`, {
        ...meta({ mtime: 1_600_000_000 + (i % 3), xattrs: new Map([['user.common', Buffer.from('shared by many')], ['trusted.n', Buffer.from(String(i % 7))]]) }),
        kind: 'file', size: 0, chunks: []
      })
    }
    const longTarget = 'L'.repeat(4095)
    root.entries.set('longlink', { ...meta({ mode: 0o777 }), kind: 'symlink', target: Buffer.from(longTarget) })
    root.entries.set('sub', newDir(meta({ mode: 0o755 })))
    const { image } = writeErofs(root, { chunkSize: 1 << 20, devices: [] })
    const img = join(work, 'plain.erofs')
    await writeFile(img, image)
    await run('fsck.erofs', [img])
    const mnt = join(work, 'mnt')
    await mkdir(mnt)
    await mountErofs(img, [], mnt)
    try {
      const s = await snapshot(mnt)
      expect(s.entries.sock).toMatchObject({ type: 'socket', mode: 0o600 })
      expect(s.entries.longlink).toMatchObject({ type: 'symlink', target: longTarget })
      expect(Object.keys(s.entries).filter(p => p.startsWith('big/'))).toHaveLength(3000)
      expect(s.entries['big/file-01234-pppppppppppppppppppppppppppppppppp']).toMatchObject({
        size: 0, mtime: String((1_600_000_000 + 1234 % 3) * 1e9), xattrs: { 'user.common': '0x' + Buffer.from('shared by many').toString('hex'), 'trusted.n': '0x' + Buffer.from(String(1234 % 7)).toString('hex') }
      })
      expect(s.entries.big).toMatchObject({ mode: 0o711, uid: 5, gid: 6 })
    } finally {
      await umount(mnt)
    }
  })

  it('refuses what EROFS cannot hold', () => {
    const root = newDir(meta())
    root.entries.set('x', { ...meta({ xattrs: new Map([['system.nfs4_acl', Buffer.from('x')]]) }), kind: 'fifo' })
    expect(() => writeErofs(root, { chunkSize: 4096, devices: [] })).toThrow(ErofsWriteError)
    const root2 = newDir(meta())
    root2.entries.set('f', { ...meta(), kind: 'file', size: 10, chunks: [] })
    expect(() => writeErofs(root2, { chunkSize: 4096, devices: [] })).toThrow(ErofsWriteError)
    expect(() => writeErofs(newDir(meta()), { chunkSize: 3000, devices: [] })).toThrow(ErofsWriteError)
  })
})
