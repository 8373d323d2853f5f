/** What a command may touch of its process, passed in so commands can be driven from tests. */
export interface CommandIO {
  stdout: NodeJS.WritableStream
  stderr: NodeJS.WritableStream
  env: NodeJS.ProcessEnv
}
