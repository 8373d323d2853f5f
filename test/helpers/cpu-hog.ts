/**
 * A busy machine for tests and benches: a child process that burns one core
 * (of this machine's two) until stopped. Timing-sensitive tests run with one
 * beside them, so they pass on a loaded edge box and not only on an idle one.
 */
import { spawn, type ChildProcess } from 'node:child_process'

export interface CpuHog {
  pid: number
  stop: () => Promise<void>
}

export async function startCpuHog (): Promise<CpuHog> {
  const child: ChildProcess = spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' })
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve)
    child.once('error', reject)
  })
  // A test that dies before stopping it must not leave a core burning.
  const cleanup = (): void => { child.kill('SIGKILL') }
  process.once('exit', cleanup)
  return {
    pid: child.pid!,
    stop: async () => {
      process.off('exit', cleanup)
      if (child.exitCode != null || child.signalCode != null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGKILL')
      await exited
    }
  }
}
