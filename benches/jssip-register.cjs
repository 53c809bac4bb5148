// The REGISTER benchmark's JsSIP side (benches/operator.rs runs it): JsSIP
// 3.13 in Node over the `ws` package, REGISTERs RUNS times against the same
// Asterisk the probe engine uses, each from a fresh UA and WebSocket, and
// prints the medians as JSON. Usage:
//   BROWSER_DIR=... node jssip-register.cjs URL DOMAIN USER PASSWORD RUNS CA_FILE
'use strict';
const fs = require('fs');
const dir = process.env.BROWSER_DIR;
const JsSIP = require(`${dir}/node_modules/jssip`);
const WS = require(`${dir}/node_modules/ws`);
const [url, domain, user, password, runs, caFile] = process.argv.slice(2);
const ca = fs.readFileSync(caFile);
// The URL's host is the SIP domain; the socket goes to loopback, with SNI
// and the certificate still checked against the domain (like --connect-to).
const lookup = (host, options, callback) =>
  options && options.all ? callback(null, [{ address: '127.0.0.1', family: 4 }]) : callback(null, '127.0.0.1', 4);
global.WebSocket = class extends WS {
  constructor(address, protocols) {
    super(address, protocols, { ca, servername: domain, lookup });
  }
};
JsSIP.debug.disable('JsSIP:*');

function once() {
  return new Promise((resolve, reject) => {
    const socket = new JsSIP.WebSocketInterface(url);
    const ua = new JsSIP.UA({
      sockets: [socket], uri: `sip:${user}@${domain}`, password,
      register: true, session_timers: false, register_expires: 60,
    });
    const t0 = process.hrtime.bigint();
    ua.on('registered', () => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      ua.stop();
      setTimeout(() => resolve(ms), 50);
    });
    ua.on('registrationFailed', (e) => reject(new Error(`registration failed: ${e.cause}`)));
    ua.start();
  });
}

(async () => {
  await once(); // warm-up
  const times = [];
  for (let i = 0; i < Number(runs); i++) times.push(await once());
  times.sort((a, b) => a - b);
  console.log(JSON.stringify({ runs: times.length, median_ms: times[times.length >> 1], min_ms: times[0], max_ms: times[times.length - 1] }));
  process.exit(0);
})().catch((e) => { console.error(e.message); process.exit(1); });
