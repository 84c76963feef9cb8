/**
 * Coalesces the HTTP/2 frames a session writes within one turn of the event loop into one socket write.
 *
 * Why: Deno's node:http2 sends every frame with its own send() system call, and a unary gRPC call is three
 * frames each way (HEADERS, DATA, trailers). On loopback a send() also runs the receiver's TCP path, so
 * those calls were a quarter of a service's CPU. Corking the session's socket when a response (server) or a
 * request (client) starts, and uncorking it once the current turn's callbacks ran (setImmediate), turns them
 * into one write per turn for all the streams of the session. It delays nothing beyond the current turn.
 * (A response's trailers still leave on their own: node:http2 sends them only once the DATA before them
 * was written.)
 */
import type http2 from "node:http2";

interface Corkable {
  cork(): void;
  uncork(): void;
}

/** Corks the session's socket until the current turn's callbacks ran; no-op without a socket. */
export function corkForThisTurn(session: http2.Http2Session | undefined): void {
  const socket = session?.socket as unknown as Corkable | undefined;
  if (!socket) return;
  socket.cork();
  setImmediate(() => socket.uncork());
}
