// The web phone's logic (index.html beside it): JsSIP registers the user
// over the page's own origin and places or answers one call at a time.
'use strict';
const SIP = JsSIP.default || JsSIP;
const $ = (id) => document.getElementById(id);
const socketUrl = `wss://${location.host}/ws`;
const domain = location.hostname;
$('server').textContent = socketUrl;

// A provisioning link's fragment: user, password, name, ice (JSON).
const given = new URLSearchParams(location.hash.slice(1));
let iceServers = [];
try { iceServers = JSON.parse(given.get('ice') || '[]'); } catch (e) { iceServers = []; }
$('user').value = given.get('user') || '';
$('password').value = given.get('password') || '';
$('name').value = given.get('name') || '';
if (location.hash) history.replaceState(null, '', location.pathname);

let ua = null, session = null, registered = false, callState = 'idle', levels = [];

function show(id, text, kind) {
  $(id).textContent = text;
  $(id).className = 'state' + (kind ? ' ' + kind : '');
}

function setCall(state, text, kind) {
  callState = state;
  show('callstate', text, kind);
  const busy = state !== 'idle';
  $('call').disabled = busy || !registered;
  $('hangup').disabled = !busy;
  $('answer').hidden = state !== 'incoming';
}

// Level of a stream, 0-1, drawn on a meter (WebAudio: RMS of the waveform).
function meter(stream, id) {
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 512;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const data = new Float32Array(analyser.fftSize);
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(data);
    const rms = Math.sqrt(data.reduce((s, v) => s + v * v, 0) / data.length);
    $(id).value = Math.min(1, rms * 4);
  }, 100);
  levels.push(() => { clearInterval(timer); ctx.close(); $(id).value = 0; });
}

function watchMedia(pc) {
  pc.addEventListener('track', (e) => {
    const stream = e.streams[0] || new MediaStream([e.track]);
    $('audio').srcObject = stream;
    meter(stream, 'speaker');
  });
}

function attach(s) {
  session = s;
  const peer = s.direction === 'incoming' ? s.remote_identity.uri.user : $('target').value;
  if (s.connection) watchMedia(s.connection);
  else s.on('peerconnection', (e) => watchMedia(e.peerconnection));
  // An incoming session's progress is our own 180: it keeps Answer shown.
  if (s.direction !== 'incoming') s.on('progress', () => setCall('ringing', `Ringing ${peer}…`));
  s.on('confirmed', () => {
    const local = s.connection.getSenders().map((x) => x.track).filter(Boolean);
    if (local.length) meter(new MediaStream(local), 'mic');
    setCall('in-call', `In call with ${peer}`, 'good');
  });
  const done = (why) => (e) => {
    levels.forEach((stop) => stop());
    levels = [];
    session = null;
    setCall('idle', `${why}: ${e.cause || 'ended'}`, why === 'Failed' ? 'bad' : '');
  };
  s.on('ended', done('Call ended'));
  s.on('failed', done('Failed'));
}

function start(user, password, name) {
  const config = {
    sockets: [new SIP.WebSocketInterface(socketUrl)],
    uri: `sip:${user}@${domain}`,
    authorization_user: user,
    password,
    register: true,
    session_timers: false,
  };
  if (name) config.display_name = name;
  ua = new SIP.UA(config);
  ua.on('connected', () => show('state', `Connected, registering ${user}…`));
  ua.on('disconnected', () => { registered = false; show('state', 'Disconnected from the PBX; retrying…', 'bad'); setCall(callState, $('callstate').textContent); });
  ua.on('registered', () => { registered = true; show('state', `Registered as ${user}`, 'good'); setCall(callState, $('callstate').textContent); });
  ua.on('registrationFailed', (e) => { registered = false; show('state', `Registration failed: ${e.cause}`, 'bad'); });
  ua.on('newRTCSession', (e) => {
    if (session) { if (e.originator === 'remote') e.session.terminate({ status_code: 486 }); return; }
    attach(e.session);
    if (e.originator === 'remote') setCall('incoming', `Incoming call from ${e.session.remote_identity.uri.user}`);
  });
  $('login').hidden = true;
  $('phone').hidden = false;
  setCall('idle', 'Idle');
  ua.start();
}

const media = () => ({ mediaConstraints: { audio: true, video: false }, pcConfig: { iceServers } });
$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  start($('user').value, $('password').value, $('name').value);
});
$('call').addEventListener('click', () => {
  setCall('calling', `Calling ${$('target').value}…`);
  ua.call(`sip:${$('target').value}@${domain}`, media());
});
$('answer').addEventListener('click', () => session && session.answer(media()));
$('hangup').addEventListener('click', () => session && session.terminate());
$('logout').addEventListener('click', () => { if (ua) ua.stop(); location.reload(); });

window.phone = {
  async stats() {
    const out = { registered, callState, packetsSent: 0, packetsReceived: 0, codec: null };
    const pc = session && session.connection;
    if (!pc) return out;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'audio') out.packetsSent = s.packetsSent;
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        out.packetsReceived = s.packetsReceived;
        out.packetsLost = s.packetsLost;
        out.jitter = s.jitter;
      }
      if (s.type === 'codec' && s.mimeType.startsWith('audio/') && !out.codec) out.codec = s.mimeType;
    });
    return out;
  },
};

if ($('user').value && $('password').value) start($('user').value, $('password').value, $('name').value);
