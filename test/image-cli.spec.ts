/**
 * `guoce image convert | inspect | check` on an image built by umoci, as a user runs them.
 */
import { describe, it, expect, afterAll, beforeAll } from 'vitest'
import { mkdtemp, rm, writeFile, mkdir, copyFile, readFile, readdir } from 'node:fs/promises'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { runGuoce } from '@guoce/testkit'

const exec = promisify(execFile)
let dir = ''

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'guoce-image-cli-'))
  const img = join(dir, 'src')
  await exec('umoci', ['init', '--layout', img])
  await exec('umoci', ['new', '--image', `${img}:v1`])
  await exec('umoci', ['unpack', '--rootless', '--image', `${img}:v1`, join(dir, 'b')])
  const rootfs = join(dir, 'b', 'rootfs')
  await mkdir(join(rootfs, 'bin'), { recursive: true })
  await copyFile('/bin/busybox', join(rootfs, 'bin', 'busybox'))
  const big = randomBytes(3 * 1024 * 1024)
  await writeFile(join(rootfs, 'data-a'), big)
  await writeFile(join(rootfs, 'data-b'), big) // same bytes: stored once
  await writeFile(join(rootfs, 'hello.txt'), 'hello\n')
  await exec('umoci', ['repack', '--image', `${img}:v1`, join(dir, 'b')])
})

afterAll(async () => { if (dir !== '') await rm(dir, { recursive: true, force: true }) })

describe('guoce image', () => {
  it('converts, inspects and checks an image; a corrupted blob is named', async () => {
    const conv = await runGuoce(['image', 'convert', '--source', `oci:${join(dir, 'src')}:v1`, '--target', `oci:${join(dir, 'lazy')}:v1`, '--json'])
    expect(conv.code, conv.stderr).toBe(0)
    expect(JSON.parse(conv.stdout).layers).toBe(1)

    const insp = await runGuoce(['image', 'inspect', `oci:${join(dir, 'lazy')}:v1`, '--json'])
    expect(insp.code, insp.stderr).toBe(0)
    const info = JSON.parse(insp.stdout)
    expect(info.layers).toHaveLength(1)
    // two identical 3 MiB files and busybox: the blob holds the 3 MiB once (chunks are block-aligned)
    expect(info.fileBytes).toBeGreaterThan(6 * 1024 * 1024)
    expect(info.blobBytes).toBeLessThan(info.fileBytes - 3 * 1024 * 1024 + 64 * 1024)

    const ok = await runGuoce(['image', 'check', `oci:${join(dir, 'lazy')}:v1`])
    expect(ok.code, ok.stderr).toBe(0)
    expect(ok.stdout).toMatch(/^ok sha256:/)

    // flip one byte in the middle of the chunk blob
    const blob = info.blobs[0].digest as string
    const path = join(dir, 'lazy', 'blobs', 'sha256', blob.slice(7))
    const bytes = await readFile(path)
    bytes[bytes.length >> 1] ^= 0xff
    await writeFile(path, bytes)
    const bad = await runGuoce(['image', 'check', `oci:${join(dir, 'lazy')}:v1`])
    expect(bad.code).not.toBe(0)
    const lines = bad.stderr.trim().split('\n')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/^guoce: error: /)
    expect(lines[0]).toMatch(/chunk|digest|blob/i)
  })

  it('refuses a missing source with one line and writes nothing', async () => {
    const target = join(dir, 'none')
    const r = await runGuoce(['image', 'convert', '--source', `oci:${join(dir, 'missing')}:v1`, '--target', `oci:${target}:v1`])
    expect(r.code).not.toBe(0)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(await readdir(dir)).not.toContain('none')
  })
})
