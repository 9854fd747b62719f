//! Realistic push texts, built once per run from the `fake` crate's locales and a few
//! hand-written game-notification templates per language. Calling `fake` per message would
//! allocate several strings each time; a pool of pre-escaped JSON strings makes a message a
//! handful of copies.

use fake::faker::address::raw::CityName;
use fake::faker::impls::address::CityNameGenFn;
use fake::faker::lorem::raw::Words;
use fake::faker::name::raw::FirstName;
use fake::locales::{Data, AR_SA, DE_DE, EN, FR_FR, JA_JP, PT_BR, ZH_CN};
use fake::Fake;
use rand::rngs::SmallRng;
use rand::Rng;

/// Number of (title, body) pairs in a pool: enough variety, built in about a millisecond.
const POOL_SIZE: usize = 1024;
/// Bytes of ASCII filler text, the source of payload padding.
const FILLER_SIZE: usize = 16 * 1024;

/// (titles, bodies) for one language; `{name}` and `{city}` are filled from `fake`.
struct Language {
    titles: &'static [&'static str],
    bodies: &'static [&'static str],
}

const ENGLISH: Language = Language {
    titles: &["Come play!", "Your daily reward is ready", "New event!"],
    bodies: &[
        "{name} misses you! Come play!",
        "{name} sent you a gift from {city}!",
        "{name} just beat your high score!",
    ],
};
const FRENCH: Language = Language {
    titles: &[
        "Viens jouer !",
        "Ta récompense t'attend",
        "Nouvel événement !",
    ],
    bodies: &[
        "Tu manques à {name} ! Viens jouer !",
        "{name} t'a envoyé un cadeau depuis {city} !",
        "{name} vient de battre ton record !",
    ],
};
const GERMAN: Language = Language {
    titles: &[
        "Komm spielen!",
        "Deine tägliche Belohnung wartet",
        "Neues Event!",
    ],
    bodies: &[
        "{name} vermisst dich! Komm spielen!",
        "{name} hat dir ein Geschenk aus {city} geschickt!",
        "{name} hat gerade deinen Rekord gebrochen!",
    ],
};
const PORTUGUESE: Language = Language {
    titles: &[
        "Venha jogar!",
        "Sua recompensa diária está pronta",
        "Novo evento!",
    ],
    bodies: &[
        "{name} está com saudades! Venha jogar!",
        "{name} te enviou um presente de {city}!",
        "{name} acabou de bater seu recorde!",
    ],
};
const JAPANESE: Language = Language {
    titles: &[
        "遊びに来てね!",
        "デイリー報酬を受け取ろう",
        "新しいイベント開催中!",
    ],
    bodies: &[
        "{name}さんがあなたを待っています!",
        "{name}さんが{city}からプレゼントを送りました!",
        "{name}さんがあなたのハイスコアを更新しました!",
    ],
};
const CHINESE: Language = Language {
    titles: &["快来玩吧!", "每日奖励已就绪", "新活动开始了!"],
    bodies: &[
        "{name}想你了!快来玩吧!",
        "{name}从{city}给你送了一份礼物!",
        "{name}刚刚打破了你的最高纪录!",
    ],
};
const ARABIC: Language = Language {
    titles: &["تعال والعب!", "مكافأتك اليومية جاهزة", "حدث جديد!"],
    bodies: &[
        "{name} يفتقدك! تعال والعب!",
        "{name} أرسل لك هدية من {city}!",
        "{name} حطم رقمك القياسي!",
    ],
};

/// Pre-escaped JSON strings (quotes included) ready to copy into a message.
pub struct TextPool {
    titles: Vec<Box<str>>,
    bodies: Vec<Box<str>>,
    /// ASCII words and spaces, no characters that need escaping.
    filler: String,
}

impl TextPool {
    /// Builds the pool from `rng`, so the same seed gives the same texts.
    pub fn new(rng: &mut SmallRng) -> TextPool {
        let mut titles = Vec::with_capacity(POOL_SIZE);
        let mut bodies = Vec::with_capacity(POOL_SIZE);
        for i in 0..POOL_SIZE {
            // English most often, as most traffic; the others in turn.
            let (title, body) = match i % 10 {
                0..=3 => text(EN, &ENGLISH, rng),
                4 => text(FR_FR, &FRENCH, rng),
                5 => text(DE_DE, &GERMAN, rng),
                6 => text(PT_BR, &PORTUGUESE, rng),
                7 => text(JA_JP, &JAPANESE, rng),
                8 => text(ZH_CN, &CHINESE, rng),
                _ => text(AR_SA, &ARABIC, rng),
            };
            titles.push(json_string(&title));
            bodies.push(json_string(&body));
        }
        let mut filler = String::with_capacity(FILLER_SIZE + 64);
        while filler.len() < FILLER_SIZE {
            let words: Vec<String> = Words(EN, 8..16).fake_with_rng(rng);
            for w in words {
                filler.push_str(&w);
                filler.push(' ');
            }
        }
        filler.retain(|c| c.is_ascii_alphanumeric() || c == ' ');
        TextPool {
            titles,
            bodies,
            filler,
        }
    }

    /// A random (title, body) in one language, as JSON string literals.
    pub fn pick(&self, rng: &mut SmallRng) -> (&str, &str) {
        let i = rng.random_range(0..self.titles.len());
        (&self.titles[i], &self.bodies[i])
    }

    /// Appends exactly `len` bytes of ASCII text that needs no JSON escaping.
    pub fn push_filler(&self, out: &mut Vec<u8>, mut len: usize, rng: &mut SmallRng) {
        let filler = self.filler.as_bytes();
        while len > 0 {
            let start = rng.random_range(0..filler.len());
            let take = len.min(filler.len() - start);
            out.extend_from_slice(&filler[start..start + take]);
            len -= take;
        }
    }
}

fn text<L: Data + CityNameGenFn + Copy>(
    locale: L,
    lang: &Language,
    rng: &mut SmallRng,
) -> (String, String) {
    let name: String = FirstName(locale).fake_with_rng(rng);
    let city: String = CityName(locale).fake_with_rng(rng);
    let title = lang.titles[rng.random_range(0..lang.titles.len())];
    let body = lang.bodies[rng.random_range(0..lang.bodies.len())];
    (
        title.to_string(),
        body.replace("{name}", &name).replace("{city}", &city),
    )
}

fn json_string(s: &str) -> Box<str> {
    serde_json::Value::from(s).to_string().into_boxed_str()
}
