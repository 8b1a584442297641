import { describe, it, expect } from 'vitest'
import { PieceDigestMismatchError, OriginStatusError, toErrorInfo, fromErrorInfo } from '../src/index.js'

describe('errors', () => {
  it('carry names and codes across the wire', () => {
    const e = new PieceDigestMismatchError('bad piece')
    expect(e.name).toBe('PieceDigestMismatchError')
    expect(e.code).toBe('ERR_PIECE_DIGEST')
    const back = fromErrorInfo(toErrorInfo(e))
    expect(back.name).toBe(PieceDigestMismatchError.name)
    const s = fromErrorInfo(toErrorInfo(new OriginStatusError(404, 'origin returned HTTP 404')))
    expect(s).toBeInstanceOf(OriginStatusError)
    expect((s as InstanceType<typeof OriginStatusError>).status).toBe(404)
  })
})
