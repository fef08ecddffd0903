"""jaxmir.pcm: WAV headers and PCM frames as live writers send them, against libsndfile's
reading."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import soundfile

from conftest import encoded_audio, ffmpeg_frames
from jaxmir.errors import AudioError
from jaxmir.pcm import ByteReader, decode_pcm, frame_bytes, read_wav_header

# (container, subtype, how soundfile reads it for comparison, how ours becomes that)
FORMATS = [
    ("WAV", "PCM_16", "int16", lambda v: v),
    ("WAV", "PCM_24", "int32", lambda v: v),          # 24-bit at int32 scale, as libsndfile
    ("WAV", "PCM_32", "int32", lambda v: v),
    ("WAV", "PCM_U8", "int16", lambda v: (v.astype(np.int16) - 128) << 8),
    ("WAV", "FLOAT", "float32", lambda v: v),
    ("WAV", "DOUBLE", "float64", lambda v: v),
    ("WAVEX", "PCM_24", "int32", lambda v: v),        # WAVE_FORMAT_EXTENSIBLE
    ("WAVEX", "FLOAT", "float32", lambda v: v),
]


def _wav(container: str, subtype: str, channels: int = 2, rate: int = 22050) -> bytes:
    audio = np.random.default_rng(3).uniform(-0.9, 0.9, (1000, channels))
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format=container, subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize("container, subtype, read_as, scale", FORMATS,
                         ids=[f"{c}-{s}" for c, s, _, _ in FORMATS])
def test_frames_equal_libsndfile(container, subtype, read_as, scale):
    data = _wav(container, subtype)
    stream = io.BytesIO(data)
    rate, channels, dtype, size = read_wav_header(stream.read)
    assert (rate, channels) == (22050, 2)
    payload = stream.read(size)
    assert size == len(payload) and size % frame_bytes(dtype, channels) == 0
    ours = scale(decode_pcm(payload, dtype, channels))
    theirs, _ = soundfile.read(io.BytesIO(data), dtype=read_as, always_2d=True)
    np.testing.assert_array_equal(ours, theirs)


def test_unknown_size_and_odd_chunks():
    data = bytearray(_wav("WAV", "PCM_16", channels=1))
    data[40:44] = b"\xff\xff\xff\xff"                       # a live writer's data size
    assert read_wav_header(io.BytesIO(bytes(data)).read)[3] is None
    # an odd-sized chunk before "data" is padded to an even size
    odd = data[:36] + b"LIST\x03\x00\x00\x00abc\x00" + data[36:]
    assert read_wav_header(io.BytesIO(bytes(odd)).read)[:3] == (22050, 1, "<i2")


def test_a_large_chunk_before_the_data_is_skipped():
    """A 300-KB chunk before ``data`` (read and dropped in pieces): the header after it, and the
    samples' offset, as libsndfile reads them."""
    from jaxmir.pcm import parse_wav_header

    data = _wav("WAV", "PCM_16", channels=1)
    junk = b"junk" + (300_000).to_bytes(4, "little") + bytes(300_000)
    padded = data[:36] + junk + data[36:]
    header = parse_wav_header(io.BytesIO(padded).read, "x.wav")
    assert (header.sample_rate, header.channels, header.dtype) == (22050, 1, "<i2")
    assert header.data_offset == 44 + len(junk) and header.data_size == len(data) - 44
    theirs, _ = soundfile.read(io.BytesIO(padded), dtype="int16")
    ours = decode_pcm(padded[header.data_offset:header.data_offset + header.data_size], "<i2", 1)
    np.testing.assert_array_equal(ours[:, 0], theirs)
    with pytest.raises(AudioError,
                       match="x.wav: malformed WAV header: ends inside the 'junk' chunk"):
        parse_wav_header(io.BytesIO(padded[:100_000]).read, "x.wav")


@pytest.mark.parametrize("broken, problem", [
    (lambda h: h[:20], "ends inside"),
    (lambda h: b"RIFF\x00\x00\x00\x00WAVX" + h[12:], "no RIFF/WAVE signature"),
    (lambda h: h[:12] + b"data\x00\x00\x00\x00", "no fmt chunk"),
    (lambda h: h[:20] + b"\x02\x00" + h[22:], "unsupported WAV format"),
    # no channels (and frames of no bytes): a division by zero where the samples were read
    (lambda h: h[:22] + b"\x00\x00" + h[24:32] + b"\x00\x00" + h[34:],
     r"unsupported WAV format.*0 channel"),
    # WAVEFORMAT, without bits per sample: a struct.error naming no file
    (lambda h: h[:16] + b"\x0e\x00\x00\x00" + h[20:34] + h[36:], "fmt chunk of 14 bytes"),
    # samples padded inside wider frames (24 bits in 32, say) streamed as noise, exit 0
    (lambda h: h[:32] + b"\x08\x00" + h[34:], r"WAV frames of 8 bytes \(its block_align\)"),
    # a chunk cut short in its last (here only) piece: that chunk is named, not the next header
    (lambda h: h[:36] + b"LIST\x64\x00\x00\x00" + bytes(50), "ends inside the 'LIST' chunk"),
])
def test_bad_headers(broken, problem):
    header = _wav("WAV", "PCM_16")[:44]
    with pytest.raises(AudioError, match=problem):
        read_wav_header(io.BytesIO(broken(header)).read)


def test_an_rf64_header_takes_its_data_size_from_its_ds64_chunk():
    """RF64/BW64 (sizes past 4 GB): the data chunk's 0xFFFFFFFF stands for the ds64 chunk's
    64-bit size, 0 there (a live writer's) for a size not known; a hostile ds64 size is read
    in pieces, not allocated."""
    from jaxmir.pcm import parse_wav_header

    data = _wav("WAV", "PCM_16", channels=1)
    fmt, pcm = data[12:36], data[44:]

    def rf64(head: bytes, data_size: int, ds64_bytes: int = 28, chunk_size: bytes = b"\xff" * 4,
             ds64_body: int = 28) -> bytes:
        ds64 = (0).to_bytes(8, "little") + data_size.to_bytes(8, "little") + bytes(ds64_body - 16)
        return (head + b"\xff" * 4 + b"WAVE" + b"ds64" + ds64_bytes.to_bytes(4, "little") + ds64
                + fmt + b"data" + chunk_size + pcm)

    for head in (b"RF64", b"BW64"):
        header = parse_wav_header(io.BytesIO(rf64(head, len(pcm))).read, "x.wav")
        assert (header.sample_rate, header.dtype, header.data_offset, header.data_size) == \
            (22050, "<i2", 80, len(pcm))
    assert parse_wav_header(io.BytesIO(rf64(b"RF64", 0)).read).data_size is None
    assert read_wav_header(io.BytesIO(rf64(b"RF64", 0)).read) == (22050, 1, "<i2", None)
    with pytest.raises(AudioError, match="RF64 without a ds64 chunk of 24 bytes or more"):
        parse_wav_header(io.BytesIO(b"RF64" + b"\xff" * 4 + b"WAVE" + fmt).read)
    # as FFmpeg reads them: the ds64 size whatever the data chunk's own 32-bit size says (it read
    # 40,000 frames of a file whose ds64 declared 80,000, as FFmpeg and the wheel do not); a
    # ds64 chunk of fewer than 24 bytes, or of an odd number (FFmpeg then reads the next chunk
    # a byte off, and the wheel fails), is refused
    small = rf64(b"RF64", len(pcm), chunk_size=(len(pcm) // 2).to_bytes(4, "little"))
    assert parse_wav_header(io.BytesIO(small).read).data_size == len(pcm)
    for size in (16, 29):
        with pytest.raises(AudioError, match=r"without a ds64 chunk of 24 bytes or more \(an even "
                                             r"number\) first"):
            parse_wav_header(io.BytesIO(rf64(b"RF64", len(pcm), ds64_bytes=size,
                                             ds64_body=size)).read)
    with pytest.raises(AudioError, match="ends inside the 'ds64' chunk"):
        parse_wav_header(io.BytesIO(rf64(b"RF64", len(pcm), ds64_bytes=0xFFFFFFF0)).read)


def test_a_data_chunk_after_an_odd_sized_one_is_found_past_its_pad_byte():
    """A WAV whose data chunk holds an odd number of bytes (8-bit mono), its pad byte, then a
    second data chunk: the size of the chunk FFmpeg reads (the last), looked for past the pad."""
    from jaxmir.pcm import data_chunk_after

    first = bytearray(_wav("WAV", "PCM_U8", channels=1)[:44 + 999])
    first[40:44] = (999).to_bytes(4, "little")
    second = b"data" + (500).to_bytes(4, "little") + bytes(range(250)) * 2
    whole = bytearray(first + b"\x00" + second)
    whole[4:8] = (len(whole) - 8).to_bytes(4, "little")
    assert (data_chunk_after(io.BytesIO(bytes(whole[len(first):])).read, 1)
            == ffmpeg_frames(bytes(whole)) == 500)


@pytest.mark.parametrize("fmt_bytes, extension", [(26, 8), (38, 20), (40, 0), (40, 21)])
def test_an_extensible_format_without_its_whole_extension_is_refused_as_ffmpeg_refuses_it(
        fmt_bytes, extension):
    """A WAVE_FORMAT_EXTENSIBLE fmt chunk cut short of its 22-byte extension (or whose cbSize
    says less): FFmpeg reads no sub-format there and decodes nothing; a live stream's header
    read its PCM tag all the same."""
    data = bytearray(_wav("WAVEX", "PCM_16", channels=1))
    assert data[12:20] == b"fmt " + (40).to_bytes(4, "little")
    data[36:38] = extension.to_bytes(2, "little")  # cbSize
    data[16:20] = fmt_bytes.to_bytes(4, "little")
    data = data[:20 + fmt_bytes] + data[20 + 40:]
    data[4:8] = (len(data) - 8).to_bytes(4, "little")
    assert ffmpeg_frames(bytes(data)) is None
    with pytest.raises(AudioError, match=r"unsupported WAV format \(format tag 65534, 16 bits"):
        read_wav_header(io.BytesIO(bytes(data)).read)


@pytest.mark.parametrize("guid_edit, decoded", [
    (lambda guid: guid[:6] + b"\x11" * 10, False),   # not behind a base GUID FFmpeg knows
    (lambda guid: guid[:2] + b"\x01\x00" + guid[4:], False),   # a 32-bit tag: 0x00010001
    (lambda guid: guid[:4] + bytes.fromhex("0000000000001000800000aa"), True)],  # a broken base
    ids=["another_base", "tag_of_32_bits", "broken_base"])
def test_an_extensible_sub_format_is_read_as_ffmpeg_reads_its_guid(guid_edit, decoded):
    """FFmpeg takes the sub-format GUID's first 4 bytes as the format tag only behind one of the
    base GUIDs it knows; a live stream's header read the first 2 of any GUID."""
    data = bytearray(_wav("WAVEX", "PCM_16", channels=1))
    data[44:60] = guid_edit(bytes(data[44:60]))  # the fmt chunk's last 16 bytes
    assert ffmpeg_frames(bytes(data)) == (1000 if decoded else None)
    if decoded:
        assert read_wav_header(io.BytesIO(bytes(data)).read) == (22050, 1, "<i2", 2000)
    else:
        with pytest.raises(AudioError, match=r"unsupported WAV format \(format tag 6553\d, 16"):
            read_wav_header(io.BytesIO(bytes(data)).read)


def test_the_first_fmt_chunk_counts():
    """A second fmt chunk before the data is skipped, as FFmpeg's wavdec.c (got_fmt) reads
    the header: the rate and channels are the first one's."""
    import av

    data = _wav("WAV", "PCM_16", channels=1)
    other = _wav("WAV", "PCM_16", channels=2, rate=8000)[12:36]   # its fmt chunk, whole
    twice = data[:36] + other + data[36:]
    with av.open(io.BytesIO(twice)) as container:
        audio = container.streams.audio[0]
        theirs = (audio.rate, audio.channels)
    assert read_wav_header(io.BytesIO(twice).read)[:2] == theirs
    assert theirs == (22050, 1)                          # the reference read the first one too


def test_a_block_align_short_of_the_samples_is_read_by_the_samples():
    """A writer's bogus block_align (0, or less than a frame) was ignored, frames sized by the
    samples; only frames wider than their samples (padding inside) are refused."""
    header = _wav("WAV", "PCM_16")[:44]
    for align in (b"\x00\x00", b"\x01\x00"):
        assert read_wav_header(io.BytesIO(header[:32] + align + header[34:]).read)[2] == "<i2"


def test_reader_gives_bytes_as_they_arrive():
    read_end, write_end = os.pipe()
    try:
        reader = ByteReader(read_end)
        os.write(write_end, b"RIFFabc")
        assert reader.peek(4) == b"RIFF" and reader.read(2) == b"RI"
        assert reader.peek(3) == b"FFa"
        reader.unread(b"RI")                               # taken back: in front of what waits
        assert reader.some() == b"RIFFabc"                 # what has arrived, without waiting
        os.write(write_end, b"xyz")
        os.close(write_end)
        write_end = None
        assert reader.read(10) == b"xyz" and reader.ended and reader.some() == b""
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)


@pytest.mark.parametrize("container, codec, rate, options, kind", [
    ("mp3", "libmp3lame", 44100, {"id3v2_version": "0"}, "an MP3 file"),      # MPEG-1 layer III
    # MPEG-2
    ("mp3", "libmp3lame", 22050, {"id3v2_version": "0", "write_xing": "0"}, "an MP3 file"),
    ("mp3", "libmp3lame", 8000, {"id3v2_version": "0"}, "an MP3 file"),       # MPEG-2.5
    ("mp2", "mp2", 48000, None, "an MP2 file"),                              # layer II
    ("mp2", "mp2", 24000, None, "an MP2 file"),                        # MPEG-2 layer II
    ("adts", "aac", 44100, None, "an AAC (ADTS) file"),
    ("mp3", "libmp3lame", 44100, None, "an MP3 file (ID3 tag)"),
    ("flac", "flac", 44100, None, "a FLAC file"),
])
def test_encoded_streams_are_told_from_pcm(container, codec, rate, options, kind):
    """An MP3 with no ID3 tag opens on a frame header, not a signature: streamed on standard
    input with --rate it was read as raw PCM, and tagged as noise."""
    from jaxmir.pcm import encoded_format

    data = encoded_audio(container, codec, rate, options)
    assert encoded_format(lambda n: data[:n]) == kind


def test_adts_frames_of_a_bare_header_are_told_as_ffmpeg_tells_them():
    """ADTS frames of 7 bytes (a header, no payload): the shortest FFmpeg's header parser takes
    (adts_header.c: size < 7 is an error); its probe reads them as AAC."""
    import av

    from jaxmir.pcm import encoded_format

    header, length = bytearray(encoded_audio("adts", "aac", 44100)[:7]), 7
    # the 13-bit frame length: bits 0-1 of byte 3, byte 4, bits 5-7 of byte 5
    header[3:6] = bytes([header[3] & 0xFC | length >> 11, length >> 3 & 0xFF,
                         header[5] & 0x1F | (length & 7) << 5])
    data = bytes(header) * 50
    with av.open(io.BytesIO(data)) as container:
        ffmpeg_format = container.format.name
    assert ffmpeg_format == "aac"
    assert encoded_format(lambda n: data[:n]) == "an AAC (ADTS) file"


@pytest.mark.parametrize("container, codec, rate, kind", [
    ("mp3", "libmp3lame", 44100, "an MP3 file"), ("mp3", "libmp3lame", 8000, "an MP3 file"),
    ("mp2", "mp2", 48000, "an MP2 file"), ("mp2", "mp2", 22050, "an MP2 file"),
    ("adts", "aac", 44100, "an AAC (ADTS) file"),
    ("ogg", "libopus", 48000, "an Ogg file"),
])
@pytest.mark.parametrize("cut", [1, 417, 1001])
def test_encoded_streams_joined_mid_frame_are_told_from_pcm(container, codec, rate, kind, cut):
    """A live radio's stream joined anywhere opens inside a frame: only its first bytes were
    looked at, so it was read as raw PCM and tagged as noise, unsaid."""
    from jaxmir.pcm import encoded_format, joined_format

    samples = (0.3 * np.sin(np.arange(4 * rate) * 2 * np.pi * 440 / rate)).astype(np.float32)
    data = encoded_audio(container, codec, rate, {"id3v2_version": "0"} if container == "mp3"
                         else None, samples)[cut:]
    assert encoded_format(lambda n: data[:n]) is None  # not from its first bytes
    found, at = joined_format(lambda n: data[:n])
    assert found == kind and 0 < at < 1 << 14


def test_no_raw_pcm_reads_as_a_stream_joined_mid_frame():
    """Noise, constants and tones (whose period may divide a chance header's frame length: a
    100-Hz sine at 48 kHz read as MP2) of every raw format the command takes, at many levels:
    none holds three distinct frames in a row, or an Ogg page's capture pattern, in its first
    16 KB."""
    from jaxmir.pcm import encoded_format, joined_format

    rng = np.random.default_rng(11)
    seconds = np.arange(48000) / 48000
    tones = [np.round(0.1 * 32767 * np.sin(2 * np.pi * 100 * seconds)),  # MP2 before
             np.round(0.1 * 2147483647 * np.sin(2 * np.pi * 1500 * seconds[:44100] * 48 / 44.1))]
    for trial in range(300):
        scale = float(rng.choice([1, 3, 30, 300, 3000, 30000]))
        samples = {0: rng.standard_normal(12000) * scale,
                   1: np.sin(np.arange(12000) * rng.uniform(1e-3, 1)) * scale,
                   2: np.full(12000, rng.integers(-5, 5))}[trial % 3]
        for dtype in ("<i2", "<i4", "<f4"):
            data = (samples / 32768 if dtype == "<f4" else samples).astype(dtype).tobytes()
            assert encoded_format(lambda n: data[:n]) is None, (trial, dtype)
            assert joined_format(lambda n: data[:n]) is None, (trial, dtype)
    for tone, dtype in zip(tones, ("<i2", "<i4")):
        data = tone.astype(dtype).tobytes()
        assert joined_format(lambda n: data[:n]) is None, dtype
    # a square wave whose bytes (FF FE 90 00) read as MPEG-1 layer I headers, chained every 312
    # bytes by their frame length: layer I is not taken from PCM (it was called an MP1 file)
    square = np.tile(np.array([-257, 0x90], "<i2"), 4000).tobytes()
    assert encoded_format(lambda n: square[:n]) is None
    # "OggS" of a version other than 0 in the samples: no page's capture pattern
    oggs = rng.normal(0, 3000, 20000).astype("<i2").tobytes()
    oggs = oggs[:1000] + b"OggS\x01" + oggs[1000:]
    assert joined_format(lambda n: oggs[:n]) is None


def test_pcm_that_opens_like_one_frame_header_is_pcm():
    """Samples whose first bytes read as an MPEG or ADTS frame header, with none where its length
    says the next begins, are raw PCM."""
    from jaxmir.pcm import _adts_frame_bytes, encoded_format, mpeg_frame_bytes

    noise = np.random.default_rng(5).integers(-2000, 2000, 40000).astype("<i2").tobytes()
    for header in (b"\xff\xfb\x90\x64", b"\xff\xf1\x50\x80\x2e\x7f\xfc"):  # MP3 128k, ADTS
        data = header + noise
        assert (mpeg_frame_bytes(data[:4]) or _adts_frame_bytes(data[:7])) is not None
        assert encoded_format(lambda n: data[:n]) is None
    silence = bytes(40000)
    assert encoded_format(lambda n: silence[:n]) is None
    dithered = np.full(40000, -1, "<i2").tobytes()  # 0xFFFF: sync bits with reserved fields
    assert encoded_format(lambda n: dithered[:n]) is None
    # chained 256-byte ADTS frames: AAC at sampling index 12 (7350 Hz); 13-15 are reserved (no
    # rate, in FFmpeg's table too): such bytes are PCM
    for index in (12, 13, 15):
        chained = (bytes([0xFF, 0xF1, 0x40 | index << 2, 0x80, 0x20, 0x1F, 0xFC]) + bytes(249)) * 4
        assert (encoded_format(lambda n: chained[:n]) is None) == (index > 12), index


def test_pcm_that_opens_like_free_bitrate_frame_headers_is_pcm():
    """A square wave whose bytes (FF FB 00 00) read as MPEG-1 layer III headers of the free
    bitrate (index 0), whose length no header gives: FFmpeg's probe takes them for no format.
    Sized 0 bytes, each header chained to itself, they were called an MP3 file."""
    import av

    from jaxmir.pcm import encoded_format, mpeg_frame_bytes

    square = np.tile(np.array([-1025, 0], "<i2"), 20000).tobytes()
    with pytest.raises(av.error.InvalidDataError):
        av.open(io.BytesIO(square)).close()
    assert mpeg_frame_bytes(square[:4]) is None
    assert encoded_format(lambda n: square[:n]) is None


def test_a_wav_stream_is_not_scanned_for_frames_joined_mid_way():
    """Its header says what follows: the scan would wait for 16 KB before the header was read
    (a second of an 8-kHz mono stream), and look for frames in samples it need not guess."""
    from jaxmir.pcm import encoded_format, joined_format

    asked = []
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(8000, np.int16), 8000, format="WAV", subtype="PCM_16")
    data = buffer.getvalue()

    def peek(n):
        asked.append(n)
        return data[:n]

    assert encoded_format(peek) is None and joined_format(peek) is None
    assert max(asked) < 4096, asked


@pytest.mark.parametrize("rate", [48000, 24000, 22050, 16000])
def test_layer2_frames_are_sized_as_layer2_in_mpeg2_too(rate):
    """Layer II frames hold 1152 samples in MPEG-2 too (layer III's hold 576): sized as layer
    III's, an MPEG-2 MP2 file's frames were not found, on standard input nor in a file."""
    from jaxmir.pcm import mpeg_frame_bytes

    data = encoded_audio("mp2", "mp2", rate)
    at = frames = 0
    while (size := mpeg_frame_bytes(data[at:at + 4])) is not None:
        at, frames = at + size, frames + 1
    assert at == len(data) and frames > 10
