//! Audio in and out: decode any supported file to 16 kHz mono, write WAV.
//! The only module that knows symphonia, rubato and hound.
