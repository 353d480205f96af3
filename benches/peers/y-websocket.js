// y-websocket's reference server (`@y/websocket-server`), started the way
// `yws_load` starts seqsync's own server child: it listens on a free
// loopback port, prints `listening HOST:PORT` on its first line, and exits
// when its stdin closes. The connection handling is the package's own
// `setupWSConnection`, unchanged, as its `src/server.js` wires it (that file
// takes a fixed port from the environment and never prints the one it got,
// which is all this file replaces). It keeps documents in memory only and
// writes nothing to disk.
import http from 'node:http'
// The `ws` the package itself depends on (an optional dependency, 6.x).
import WebSocket from 'ws'
import { setupWSConnection } from '@y/websocket-server/utils'

const wss = new WebSocket.Server({ noServer: true })
wss.on('connection', setupWSConnection)

const server = http.createServer((_request, response) => {
  response.writeHead(200, { 'Content-Type': 'text/plain' })
  response.end('okay')
})
server.on('upgrade', (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, (ws) => {
    wss.emit('connection', ws, request)
  })
})
server.listen(0, '127.0.0.1', () => {
  const { address, port } = server.address()
  process.stdout.write(`listening ${address}:${port}\n`)
})
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()
