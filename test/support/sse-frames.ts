/** Server-Sent Events framing for test and bench clients: the one parser both use. */

/** One frame as it came: its `event` (default `message`), `id` and raw `data` text. */
export interface RawSseFrame {
  readonly event: string;
  readonly id: number | null;
  readonly data: string | undefined;
}

/**
 * Takes the complete frames (blocks ending in a blank line) off the front of `buffer`:
 * the frames, the comment-only blocks counted (`: ping`), and the unfinished rest.
 */
export function takeSseFrames(buffer: string): { readonly frames: RawSseFrame[]; readonly comments: number; readonly rest: string } {
  const frames: RawSseFrame[] = [];
  let comments = 0;
  let rest = buffer.replace(/\r\n/g, '\n');
  for (let cut = rest.indexOf('\n\n'); cut >= 0; cut = rest.indexOf('\n\n')) {
    const block = rest.slice(0, cut);
    rest = rest.slice(cut + 2);
    const fields: Record<string, string> = {};
    let comment = false;
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comment = true;
      else {
        const colon = line.indexOf(':');
        fields[colon < 0 ? line : line.slice(0, colon)] = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      }
    }
    if (comment && fields['event'] === undefined) comments++;
    else frames.push({ event: fields['event'] ?? 'message', id: fields['id'] === undefined ? null : Number(fields['id']), data: fields['data'] });
  }
  return { frames, comments, rest };
}
