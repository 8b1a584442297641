/**
 * Errors of the distribution API (OCI distribution spec, "Error Codes"): each carries its OCI code and
 * HTTP status, and is sent as `{ errors: [{ code, message }] }`. One table: `ociError`.
 */
import { GuoceError } from '@guoce/interface'

export type OciCode = 'BLOB_UNKNOWN' | 'DIGEST_INVALID' | 'MANIFEST_UNKNOWN' | 'MANIFEST_INVALID' | 'NAME_INVALID' | 'NAME_UNKNOWN' |
'SIZE_INVALID' | 'UNAUTHORIZED' | 'DENIED' | 'UNSUPPORTED' | 'UNAVAILABLE' | 'TOOMANYREQUESTS'

export class RegistryMirrorError extends GuoceError {
  static override name = 'RegistryMirrorError'
  override code = 'ERR_REGISTRY_MIRROR'
  constructor (readonly status: number, readonly ociCode: OciCode, message: string, readonly headers: Record<string, string> = {}, options?: ErrorOptions) {
    super(message, options)
  }
}

export function ociError (status: number, code: OciCode, message: string, headers: Record<string, string> = {}): RegistryMirrorError {
  return new RegistryMirrorError(status, code, message, headers)
}

/** What an upstream error status means to the client (the upstream's challenge passes through on 401). */
export function upstreamStatusError (status: number, what: 'blob' | 'manifest' | 'name', challenge?: string): RegistryMirrorError {
  if (status === 401) return ociError(401, 'UNAUTHORIZED', 'authentication required by the upstream registry', challenge != null ? { 'www-authenticate': challenge } : {})
  if (status === 403) return ociError(403, 'DENIED', 'the upstream registry denied access')
  if (status === 404) {
    return what === 'blob'
      ? ociError(404, 'BLOB_UNKNOWN', 'blob unknown to the upstream registry')
      : what === 'manifest' ? ociError(404, 'MANIFEST_UNKNOWN', 'manifest unknown to the upstream registry') : ociError(404, 'NAME_UNKNOWN', 'repository unknown to the upstream registry')
  }
  if (status === 429) return ociError(429, 'TOOMANYREQUESTS', 'the upstream registry asks to slow down')
  return ociError(502, 'UNAVAILABLE', `the upstream registry answered HTTP ${status}`)
}
