// Plain-words formatting of times, durations and end reasons.

/** Formats milliseconds left as h:mm:ss or m:ss. */
export function formatRemaining(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = String(total % 60).padStart(2, '0');
  return hours > 0 ? `${hours}:${String(minutes).padStart(2, '0')}:${seconds}` : `${minutes}:${seconds}`;
}

/** Formats a number of seconds as words: "5 minutes", "1 minute", "30 seconds". */
export function formatSeconds(seconds) {
  if (seconds >= 60 && seconds % 60 === 0) {
    const minutes = seconds / 60;
    return minutes === 1 ? '1 minute' : `${minutes} minutes`;
  }
  return seconds === 1 ? '1 second' : `${seconds} seconds`;
}

/** Formats a Unix time in milliseconds as local date and time. */
export function formatTime(unixMs) {
  if (unixMs == null) return '';
  return new Date(unixMs).toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
}

/** Explains why a session ended, from its `end` object and exit code. */
export function describeEnd(end, exitCode) {
  if (!end || !end.reason) return 'The session ended.';
  switch (end.reason) {
    case 'exited': return end.code === 0 ? 'The program exited normally (status 0).' : `The program exited with status ${end.code}.`;
    case 'signaled': return `The program was killed by signal ${end.name || end.signal}.`;
    case 'deadline': return 'The session reached its deadline.';
    case 'out_of_memory': return 'The session ran out of memory, and the kernel killed a process in it.';
    case 'command_not_found': return `The command ${end.command} was not found in the sandbox.`;
    case 'command_not_executable': return `The command ${end.command} could not be run: ${end.error}.`;
    case 'setup_failed': return `The sandbox could not be set up (${end.step}: ${end.error}).`;
    case 'destroyed': return `The session was ended before its deadline (${end.detail}).`;
    case 'interrupted': return `The server stopped while the session ran: ${end.detail}.`;
    default: return exitCode == null ? `The session ended (${end.reason}).` : `The session ended (${end.reason}, code ${exitCode}).`;
  }
}

/** Returns whether a session in this state runs or is about to run. */
export function isLive(state) {
  return state === 'pending' || state === 'starting' || state === 'running';
}
