import { inspectInputImage } from '../sources/input-image.js';
import { actingUser, InvalidInputError, type Caller } from './caller.js';
import { importInputImage, type SubmitDeps } from './submit-job.js';

/** An input image stored for a user: its attach id (a stage's `mergedImageAttachId`) and what it is. */
export interface UploadedAttachment {
  readonly attachId: string;
  readonly contentType: string;
  readonly byteSize: number;
  readonly width: number;
  readonly height: number;
}

/**
 * Stores an uploaded input image for the caller's user (an admin may name one), checked
 * like an input file (size, format, pixels, decodes to the end). Content-addressed: the
 * same bytes again give the same attach id. `POST /v1/attachments`.
 *
 * @throws {InvalidInputError} the bytes are not one whole image within the limits.
 */
export async function uploadAttachment(deps: SubmitDeps, caller: Caller, bytes: Uint8Array, named?: string): Promise<UploadedAttachment> {
  const userId = actingUser(caller, named);
  const checked = await inspectInputImage(bytes, 'the upload');
  if ('rule' in checked) throw new InvalidInputError([{ field: 'body', rule: checked.rule }]);
  const { mimeType, width, height } = checked.image;
  const attachId = await importInputImage(deps, userId, { bytes, mimeType, width, height });
  return { attachId, contentType: mimeType, byteSize: bytes.byteLength, width, height };
}
