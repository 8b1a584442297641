import { createHash } from 'node:crypto'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { InvalidDigestError } from '@guoce/interface'

const SHA256_CODE = 0x12
const RAW_CODEC = 0x55
const DIGEST_RE = /^sha256:([0-9a-f]{64})$/

/** Parse an OCI digest string; throws InvalidDigestError on anything but `sha256:<64 lowercase hex>`. */
export function parseDigest (digest: string): Uint8Array {
  const m = DIGEST_RE.exec(digest)
  if (m?.[1] == null) throw new InvalidDigestError(`invalid digest "${digest}": expected sha256:<64 hex digits>`)
  return Buffer.from(m[1], 'hex')
}

export function formatDigest (bytes: Uint8Array): string {
  if (bytes.length !== 32) throw new InvalidDigestError(`sha256 digest must be 32 bytes, got ${bytes.length}`)
  return `sha256:${Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex')}`
}

export function sha256 (data: Uint8Array | Uint8Array[]): Uint8Array {
  const h = createHash('sha256')
  if (Array.isArray(data)) for (const d of data) h.update(d)
  else h.update(data)
  return h.digest()
}

/** OCI digest -> CIDv1 (raw codec, sha2-256 multihash) */
export function digestToCid (digest: string): CID {
  return CID.createV1(RAW_CODEC, Digest.create(SHA256_CODE, parseDigest(digest)))
}

/** CIDv1 with a sha2-256 multihash -> OCI digest */
export function cidToDigest (cid: CID | string): string {
  const c = typeof cid === 'string' ? CID.parse(cid) : cid
  if (c.multihash.code !== SHA256_CODE) throw new InvalidDigestError(`CID ${c.toString()} is not sha2-256`)
  return formatDigest(c.multihash.digest)
}

export function equalBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0
}
