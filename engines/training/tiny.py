"""A tiny, randomly initialised checkpoint in the real on-disk format, built offline in seconds.

Tests, demos and CI need a model directory that loads exactly like a fine-tuned mBERT
(same tokenizer class, same config keys, same safetensors layout) without downloading
hundreds of megabytes. Its predictions are meaningless; its shapes and plumbing are real.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from transformers import BertConfig, BertTokenizerFast

from engines.modeling import BertForSentimentAndTopic, configure_heads

DEFAULT_TOPICS: tuple[str, ...] = (
    "earnings",
    "m&a",
    "macro",
    "markets",
    "regulation",
    "products",
    "personnel",
    "other",
)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, the BERT convention

CORPUS: dict[str, tuple[str, ...]] = {
    "en": (
        "Apple reported record quarterly revenue of $124 billion, beating analyst estimates.",
        "Shares of Tesla fell 7% after the company missed delivery targets.",
        "The Federal Reserve held interest rates steady at 5.25% to 5.50%.",
        "Microsoft agreed to acquire Activision Blizzard for $68.7 billion in cash.",
        "The S&P 500 closed at an all-time high on Friday.",
        "Inflation cooled to 3.1% in January, lower than economists expected.",
        "The SEC fined the bank $200 million over record-keeping failures.",
        "Nvidia unveiled a new AI chip aimed at data-center customers.",
        "The CEO of Boeing will step down at the end of the year.",
        "Oil prices jumped after OPEC+ announced deeper production cuts.",
        "Amazon raised its full-year guidance on strong cloud demand.",
        "Bond yields rose as investors priced in fewer rate cuts.",
        "The merger was blocked by regulators on antitrust grounds.",
        "Unemployment fell to 3.7%, signalling a resilient labour market.",
        "Analysts downgraded the stock to sell, citing weak margins.",
    ),
    "zh": (
        "腾讯第三季度营收同比增长10%，超出市场预期。",
        "阿里巴巴股价在香港市场下跌5%。",
        "中国人民银行宣布下调存款准备金率0.5个百分点。",
        "比亚迪十月新能源汽车销量创历史新高。",
        "证监会对该公司财务造假行为处以罚款。",
        "上证指数今日收涨1.2%，成交额突破一万亿元。",
        "美团宣布以现金收购一家本地物流公司。",
        "国家统计局数据显示，消费者物价指数同比上涨0.2%。",
        "华为发布了新款折叠屏手机。",
        "该银行行长因个人原因辞职。",
        "人民币兑美元汇率跌至七个月低点。",
        "公司净利润同比下降30%，低于分析师预测。",
        "房地产开发商面临严重的债务危机。",
        "投资者担心经济增长放缓。",
        "央行表示将保持货币政策稳健。",
    ),
    "es": (
        "Banco Santander registró un beneficio récord en el tercer trimestre.",
        "Las acciones de Inditex subieron un 4% tras presentar sus resultados.",
        "El Banco Central Europeo mantuvo los tipos de interés sin cambios.",
        "Telefónica anunció la venta de su filial en Argentina.",
        "La inflación en España bajó al 2,8% en diciembre.",
        "El Ibex 35 cerró la sesión con una caída del 1,5%.",
        "La CNMV abrió una investigación sobre la operación.",
        "Iberdrola invertirá 10.000 millones en energías renovables.",
        "El consejero delegado de la empresa presentó su dimisión.",
        "El peso mexicano se fortaleció frente al dólar.",
        "BBVA lanzó una oferta pública de adquisición sobre Sabadell.",
        "Los analistas prevén una desaceleración de la economía.",
        "La compañía recortará 2.000 empleos el próximo año.",
        "El precio del petróleo alcanzó su nivel más alto del año.",
        "Los resultados decepcionaron a los inversores.",
    ),
    "de": (
        "Siemens meldete einen Gewinnanstieg von 15 Prozent im Quartal.",
        "Die Aktie der Deutschen Bank fiel nach der Prognosesenkung deutlich.",
        "Die Europäische Zentralbank hat den Leitzins erneut angehoben.",
        "Volkswagen übernimmt einen Softwarehersteller für zwei Milliarden Euro.",
        "Der DAX schloss mit einem Plus von 0,8 Prozent.",
        "Die Inflation in Deutschland sank im März auf 2,2 Prozent.",
        "Die BaFin verhängte ein Bußgeld gegen den Zahlungsdienstleister.",
        "BMW stellt ein neues Elektroauto für den chinesischen Markt vor.",
        "Der Vorstandschef von Bayer tritt überraschend zurück.",
        "Die Arbeitslosigkeit stieg auf den höchsten Stand seit drei Jahren.",
        "Anleger flüchten in sichere Staatsanleihen.",
        "Das Unternehmen erhöhte seine Dividende um zehn Prozent.",
        "Die Kartellbehörde prüft die geplante Fusion.",
        "Der Euro legte gegenüber dem Dollar zu.",
        "Die Umsätze im Einzelhandel gingen zurück.",
    ),
    "fr": (
        "LVMH a publié un chiffre d'affaires en hausse de 9 % sur l'année.",
        "Le titre de Renault a chuté de 6 % à la Bourse de Paris.",
        "La Banque centrale européenne a relevé ses taux directeurs.",
        "TotalEnergies annonce l'acquisition d'un producteur d'électricité.",
        "Le CAC 40 a terminé la séance en légère baisse.",
        "L'inflation en France a ralenti à 2,3 % en février.",
        "L'AMF a sanctionné la société pour manipulation de cours.",
        "Airbus dévoile un nouvel avion moins gourmand en carburant.",
        "Le directeur général de Danone quitte ses fonctions.",
        "Le chômage a reculé au troisième trimestre.",
        "Les investisseurs craignent une récession en zone euro.",
        "BNP Paribas dépasse les attentes des analystes.",
        "Le gouvernement prépare une nouvelle taxe sur les banques.",
        "Le prix du gaz a fortement augmenté cet hiver.",
        "La fusion des deux groupes a été approuvée par Bruxelles.",
    ),
    "ja": (
        "トヨタ自動車の四半期純利益は過去最高を更新した。",
        "ソニーの株価は決算発表後に8%上昇した。",
        "日本銀行はマイナス金利政策の解除を決定した。",
        "日経平均株価は前日比500円安で取引を終えた。",
        "ソフトバンクグループは英半導体企業の買収を発表した。",
        "円相場は1ドル＝150円台まで下落した。",
        "金融庁は同社に業務改善命令を出した。",
        "任天堂は新型ゲーム機を来年発売すると発表した。",
        "日産の社長が辞任を表明した。",
        "消費者物価指数は前年比3%上昇した。",
        "投資家は米国の利上げを警戒している。",
        "同社は通期の業績予想を下方修正した。",
        "東京証券取引所で新規上場が相次いでいる。",
        "原油価格の高騰が企業収益を圧迫している。",
        "アナリストは目標株価を引き上げた。",
    ),
    "ar": (
        "أعلنت أرامكو السعودية عن ارتفاع أرباحها الفصلية بنسبة 12%.",
        "تراجعت أسهم البنوك في بورصة دبي بشكل حاد.",
        "أبقى البنك المركزي المصري على أسعار الفائدة دون تغيير.",
        "استحوذت الشركة على منافس محلي مقابل مليار دولار.",
        "ارتفع مؤشر السوق السعودية تاسي بنسبة 1.5%.",
        "انخفض معدل التضخم في الإمارات إلى 3%.",
        "فرضت هيئة السوق المالية غرامة على الشركة.",
        "أطلقت الشركة منتجا جديدا في السوق الخليجية.",
        "استقال الرئيس التنفيذي للبنك بشكل مفاجئ.",
        "ارتفعت أسعار النفط بعد قرار أوبك.",
        "يتوقع المحللون نموا قويا في الاقتصاد.",
        "تراجعت الإيرادات بسبب ضعف الطلب.",
        "وافق مجلس الإدارة على توزيع أرباح نقدية.",
        "يخشى المستثمرون من تباطؤ النمو العالمي.",
        "سجل الجنيه المصري مستوى قياسيا منخفضا أمام الدولار.",
    ),
    "ru": (
        "Сбербанк увеличил чистую прибыль на 20% за квартал.",
        "Центробанк повысил ключевую ставку до 16%.",
        "Акции Газпрома упали на Московской бирже.",
        "Рубль ослаб по отношению к доллару.",
    ),
    "pt": (
        "A Petrobras anunciou lucro recorde no trimestre.",
        "O Banco Central do Brasil cortou a taxa Selic.",
        "As ações da Vale caíram após o acidente.",
        "O Ibovespa fechou em alta de 2%.",
    ),
    "ko": (
        "삼성전자의 영업이익이 시장 예상을 웃돌았다.",
        "한국은행은 기준금리를 동결했다.",
        "코스피 지수가 2% 하락했다.",
        "현대차는 새로운 전기차를 공개했다.",
    ),
    "hi": (
        "रिलायंस इंडस्ट्रीज का तिमाही मुनाफा बढ़ा।",
        "भारतीय रिज़र्व बैंक ने रेपो दर में कोई बदलाव नहीं किया।",
        "सेंसेक्स 500 अंक गिरकर बंद हुआ।",
        "रुपया डॉलर के मुकाबले कमजोर हुआ।",
    ),
}


def build_tiny_checkpoint(
    out_dir: Path,
    *,
    topic_labels: Sequence[str] = DEFAULT_TOPICS,
    seed: int = 0,
    name: str = "tiny-mbert",
) -> Path:
    """Write tokenizer + randomly initialised BertForSentimentAndTopic to out_dir and return it.

    Deterministic: the same arguments give byte-identical files (hence the same model_version and
    scores) in every process, so tests can store expected scores (tests/unit/data/).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    config = configure_heads(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
            # Far above BERT's 0.02 so that random outputs differ per input (and per label),
            # which lets tests detect mixed-up order or leaking padding.
            initializer_range=0.5,
            pad_token_id=tokenizer.pad_token_id,
        ),
        topic_labels=topic_labels,
        name=name,
    )
    torch.manual_seed(seed)
    model = BertForSentimentAndTopic(config)
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return out_dir


def _build_tokenizer() -> BertTokenizerFast:
    """Cased multilingual WordPiece, CJK split per character as in mBERT, over a vocabulary derived
    from CORPUS alone: the special tokens, every character (word-initial, then as a ##continuation)
    and every whole word, each group sorted.

    Not trained: tokenizers' WordPiece trainer breaks ties between equally frequent merges in
    hash order, so its vocabulary (even its size) changed from process to process, and with it
    every token id and every score of the random model. Words outside CORPUS are spelt out in
    characters; characters outside it (emoji) are [UNK].
    """
    normalizer = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    pre_tokenizer = BertPreTokenizer()
    words = {
        word
        for sentences in CORPUS.values()
        for sentence in sentences
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(sentence))
    }
    chars = sorted({char for word in words for char in word})
    tokens = [*SPECIAL_TOKENS, *chars, *(f"##{char}" for char in chars), *sorted(w for w in words if len(w) > 1)]
    return BertTokenizerFast(
        vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=False, strip_accents=False,
        tokenize_chinese_chars=True, model_max_length=512,
    )
