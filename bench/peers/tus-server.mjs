// The Node tus reference server, as its README sets it up: @tus/server with
// @tus/file-store writing each upload to a file in one directory.
//   node tus-server.mjs PORT DIRECTORY
import { Server } from "@tus/server";
import { FileStore } from "@tus/file-store";

const [port, directory] = process.argv.slice(2);
const server = new Server({
  path: "/files",
  relativeLocation: true,
  datastore: new FileStore({ directory }),
});
server.listen({ host: "127.0.0.1", port: Number(port) }, () => {
  console.log(`tus-node listening on 127.0.0.1:${port}, storing in ${directory}`);
});
