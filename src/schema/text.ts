/** Small text helpers for error messages shared by the HTTP clients. */

/** The most specific message in an error's cause chain (undici wraps connector errors). */
export const deepestCauseMessage = (cause: unknown, fallback: string): string => {
  const seen: Array<string> = []
  let c: unknown = cause
  for (let i = 0; i < 5 && c !== undefined && c !== null; i++) {
    if (c instanceof Error) {
      seen.push(c.message)
      c = (c as { cause?: unknown }).cause
    } else {
      seen.push(String(c))
      break
    }
  }
  return seen.filter((m) => m.length > 0).pop() ?? fallback
}
