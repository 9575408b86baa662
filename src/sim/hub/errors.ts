/** Errors of the dev hub: its admin API, its listener and its desired-state file. */
import { Data } from "effect"

/** An admin call named a host no api key maps to. */
export class DevHubUnknownHost extends Data.TaggedError("DevHubUnknownHost")<{
  readonly hostId: string
  readonly message: string
}> {}

/** serveDevHub binds loopback only: its TLS key is public and its tokens are printed. */
export class DevHubBindRefused extends Data.TaggedError("DevHubBindRefused")<{
  readonly host: string
  readonly message: string
}> {}

/** The listener could not be started (port in use, ...). */
export class DevHubServeError extends Data.TaggedError("DevHubServeError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** An admin enrollment call the dev hub refuses (a token registered twice, a bad host id). */
export class DevHubEnrollRefused extends Data.TaggedError("DevHubEnrollRefused")<{
  readonly message: string
}> {}

/** A release directory the dev hub cannot serve (no RELEASE.json, unreadable files). */
export class DevHubReleaseRefused extends Data.TaggedError("DevHubReleaseRefused")<{
  readonly message: string
}> {}
