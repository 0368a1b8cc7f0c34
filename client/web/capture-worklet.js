// Microphone capture for the captioning page.
//
// Runs on the audio rendering thread. Takes the (already mono: channelCount 1, explicit) input
// at the context's own rate, resamples it to 16 kHz with a windowed-sinc low-pass interpolator,
// and posts Int16Array chunks of `chunkSamples` (100 ms) to the main thread.
//
// Why resample here and not with AudioContext({sampleRate: 16000}): Firefox refuses to connect
// a microphone stream to a context of another rate, and doing it here costs ~1 M multiply-adds
// per second.

const OUT_RATE = 16000;
const HALF_TAPS = 16; // kernel half-width, in output samples

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.ratio = sampleRate / OUT_RATE; // input samples per output sample
    this.cutoff = Math.min(0.5, 0.5 / this.ratio) * 0.92; // cycles per input sample, < Nyquist
    this.halfWidth = Math.ceil(HALF_TAPS * Math.max(1, this.ratio)); // in input samples
    this.input = new Float32Array(0); // unconsumed input, starting at input index `base`
    this.base = 0;
    this.next = 0; // input position (fractional, absolute) of the next output sample
    this.chunk = new Int16Array(options.processorOptions.chunkSamples);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === 'flush') {
        this.emit(true);
        this.port.postMessage({ flushed: true });
      } else if (event.data === 'stop') {
        this.running = false;
      }
    };
  }

  kernel(distance) {
    // Blackman-windowed sinc, cut off at this.cutoff
    if (Math.abs(distance) >= this.halfWidth) return 0;
    const x = 2 * this.cutoff * distance;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const w = (distance + this.halfWidth) / (2 * this.halfWidth);
    const window = 0.42 - 0.5 * Math.cos(2 * Math.PI * w) + 0.08 * Math.cos(4 * Math.PI * w);
    return 2 * this.cutoff * sinc * window;
  }

  append(samples) {
    const joined = new Float32Array(this.input.length + samples.length);
    joined.set(this.input);
    joined.set(samples, this.input.length);
    this.input = joined;
  }

  resample() {
    const end = this.base + this.input.length;
    while (this.next + this.halfWidth < end) {
      const center = Math.floor(this.next);
      let sum = 0;
      let weight = 0;
      for (let n = center - this.halfWidth + 1; n <= center + this.halfWidth; n++) {
        if (n < this.base) continue;
        const k = this.kernel(this.next - n);
        sum += this.input[n - this.base] * k;
        weight += k;
      }
      this.push(weight > 0 ? sum / weight : 0);
      this.next += this.ratio;
    }
    // keep only what the next outputs still need
    const keepFrom = Math.max(this.base, Math.floor(this.next) - this.halfWidth);
    this.input = this.input.slice(keepFrom - this.base);
    this.base = keepFrom;
  }

  push(value) {
    const clipped = Math.max(-1, Math.min(1, value));
    this.chunk[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    if (this.filled === this.chunk.length) this.emit(false);
  }

  emit(partial) {
    if (this.filled === 0) return;
    const out = partial ? this.chunk.slice(0, this.filled) : this.chunk.slice();
    this.port.postMessage({ pcm: out }, [out.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel && this.running) {
      if (this.ratio === 1) {
        for (let i = 0; i < channel.length; i++) this.push(channel[i]);
      } else {
        this.append(channel);
        this.resample();
      }
    }
    return this.running;
  }
}

registerProcessor('capture', CaptureProcessor);
