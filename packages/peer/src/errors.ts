/** The one table that maps error names to HTTP statuses. */
const STATUS: Record<string, number> = {
  InvalidUrlError: 400,
  InvalidDigestError: 400,
  InvalidParametersError: 400,
  NotFoundError: 404,
  OriginStatusError: 502,
  OriginTimeoutError: 504,
  OriginUnreachableError: 502,
  ContentLengthMismatchError: 502,
  DigestMismatchError: 502,
  NoSpaceError: 507,
  ContentChangedError: 502,
  ForbiddenError: 403,
  ReadTimeoutError: 504,
  RangeNotSatisfiableError: 416,
  AbortError: 499
}

export function errorStatus (name: string): number { return STATUS[name] ?? 500 }
