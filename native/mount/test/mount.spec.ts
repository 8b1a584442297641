/**
 * The addon mounts a file-backed EROFS image (made by mkfs.erofs, so this test does not depend on our
 * writer) with `-o device=BLOB`, reads through it, and reports errno failures as named errors.
 */
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { constants, mount, mountSync, umount2, umount2Sync } from '../src/index.js'

const run = promisify(execFile)

describe('native mount(2)/umount2(2)', () => {
  let work: string
  const mounted: string[] = []

  beforeAll(async () => {
    await run('sh', ['-c', 'command -v mkfs.erofs']).catch(() => { throw new Error('mkfs.erofs (Debian erofs-utils) is required') })
    work = await mkdtemp(join(tmpdir(), 'guoce-native-mount-'))
    await mkdir(join(work, 'src/sub'), { recursive: true })
    await writeFile(join(work, 'src/sub/hello'), 'hello from a file-backed erofs\n')
    await writeFile(join(work, 'src/big'), Buffer.alloc(3 << 20, 7))
    await run('mkfs.erofs', ['--quiet', '--chunksize=1048576', `--blobdev=${join(work, 'blob')}`, join(work, 'meta.img'), join(work, 'src')])
  })

  afterAll(async () => {
    for (const m of mounted) await umount2(m, constants.MNT_DETACH).catch(() => {})
    if (work !== undefined) await rm(work, { recursive: true, force: true })
  })

  it('mounts an EROFS image file-backed with device=BLOB (promise form)', async () => {
    const mnt = join(work, 'mnt1')
    await mkdir(mnt)
    await mount(join(work, 'meta.img'), mnt, 'erofs', constants.MS_RDONLY, `device=${join(work, 'blob')}`)
    mounted.push(mnt)
    try {
      expect(await readFile(join(mnt, 'sub/hello'), 'utf8')).toBe('hello from a file-backed erofs\n')
      expect((await readFile(join(mnt, 'big'))).equals(Buffer.alloc(3 << 20, 7))).toBe(true)
      const mountinfo = await readFile('/proc/self/mountinfo', 'utf8')
      expect(mountinfo).toContain(` ${mnt} `)
    } finally {
      await umount2(mnt, 0)
      mounted.pop()
    }
    expect(await readFile('/proc/self/mountinfo', 'utf8')).not.toContain(` ${mnt} `)
  })

  it('has blocking forms too', () => {
    const mnt = join(work, 'mnt-sync')
    return mkdir(mnt).then(() => {
      mountSync(join(work, 'meta.img'), mnt, 'erofs', constants.MS_RDONLY, `device=${join(work, 'blob')}`)
      mounted.push(mnt)
      umount2Sync(mnt)
      mounted.pop()
    })
  })

  it('throws errno errors with code, errno, syscall and path', async () => {
    const mnt = join(work, 'mnt2')
    await mkdir(mnt)
    const noent = await mount(join(work, 'missing.img'), mnt, 'erofs', constants.MS_RDONLY, null).catch((e: unknown) => e as NodeJS.ErrnoException)
    expect(noent).toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'mount', path: mnt })
    const notMounted = await umount2(mnt, 0).catch((e: unknown) => e as NodeJS.ErrnoException)
    expect(notMounted).toMatchObject({ code: 'EINVAL', syscall: 'umount2' })
    const badFs = await mount(join(work, 'meta.img'), mnt, 'no-such-fs', constants.MS_RDONLY, null).catch((e: unknown) => e as NodeJS.ErrnoException)
    expect(badFs).toMatchObject({ code: 'ENODEV' })
    expect(() => { umount2Sync(join(work, 'nowhere')) }).toThrow(expect.objectContaining({ code: 'ENOENT' }))
  })

  it('rejects bad arguments with TypeErrors', async () => {
    // @ts-expect-error wrong type on purpose
    expect(() => mountSync(null, 42, 'erofs', 0, null)).toThrow(TypeError)
    expect(() => { mountSync(null, 'a\0b', 'erofs', 0, null) }).toThrow(TypeError)
  })
})
