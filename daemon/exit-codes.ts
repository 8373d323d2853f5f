/**
 * Exit codes of `metagrid start` (and the other commands), documented in the
 * README. systemd's unit lists 2 and 3 in RestartPreventExitStatus: restarting
 * cannot fix a bad config or a data directory another process holds.
 */
export const ExitCode = {
  /** Clean stop after SIGTERM or SIGINT, or a command that completed. */
  OK: 0,
  /** Unexpected failure, or shutdown did not finish within its deadline, or a second signal forced exit. */
  FAILURE: 1,
  /** Bad command line or config: unknown key, bad value, unreadable config file. */
  USAGE: 2,
  /** Data directory unusable: locked by another daemon, key file corrupt or unreadable, database cannot open. */
  DATA_DIR: 3,
  /** A listen address (P2P or API) cannot be bound, usually because it is in use. */
  ADDRESS: 4,
  /** A client command could not reach the node's API. */
  UNREACHABLE: 5
} as const

export type ExitCodeValue = typeof ExitCode[keyof typeof ExitCode]
