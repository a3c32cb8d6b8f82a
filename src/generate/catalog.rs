//! The fixed reference data of Maison Lumière: 40 stores, the towns customers live in, ~2,000 products.
//!
//! The catalog does not depend on the seed: every generated data set sells the same products in
//! the same stores, so demo SQL can name a SKU or a store and mean the same thing everywhere.

use super::calendar::Season;
use super::rng::Rng;
use super::text::{Euros, csv_record};

pub struct Store {
    pub id: String,
    pub name: &'static str,
    pub city: &'static str,
    pub postcode: &'static str,
    pub latitude: f64,
    pub longitude: f64,
    pub opening_hours: &'static str,
    pub open_sunday: bool,
}

/// Where a customer lives: a store's town or a suburb of it, and the store nearest to it.
pub struct Town {
    pub city: &'static str,
    pub postcode: &'static str,
    pub store: usize,
}

pub struct Category {
    pub name: &'static str,
    /// French path segment on the web shop.
    pub slug: &'static str,
    /// French title on the web shop.
    pub title: &'static str,
    pub code: &'static str,
    weight: u32,
    season: Season,
    items: &'static [(&'static str, u32, u32)],
    brands: &'static [&'static str],
}

pub struct Product {
    pub sku: String,
    pub name: String,
    pub slug: String,
    pub category: usize,
    pub brand: &'static str,
    pub price_cents: i64,
}

pub struct Catalog {
    pub stores: Vec<Store>,
    pub towns: Vec<Town>,
    town_weights: Vec<u64>,
    pub categories: &'static [Category],
    pub products: Vec<Product>,
    /// Product indices of each category, best-sellers first.
    by_category: Vec<Vec<usize>>,
    /// Category weights for each month: more barbecues in June, more lamps in December.
    monthly: Vec<Vec<u32>>,
}

const PRODUCTS_PER_CATEGORY: usize = 200;

/// The catalog's own seed, fixed so that the catalog is the same for every data set.
const CATALOG_SEED: u64 = 0x4D41_4953_4F4E; // "MAISON"

impl Catalog {
    pub fn new() -> Self {
        let stores: Vec<Store> = STORES
            .iter()
            .enumerate()
            .map(|(i, s)| Store {
                id: format!("S{:02}", i + 1),
                name: s.name,
                city: s.city,
                postcode: s.postcode,
                latitude: s.latitude,
                longitude: s.longitude,
                opening_hours: s.hours,
                open_sunday: s.hours.contains("Su "),
            })
            .collect();

        let mut towns = Vec::new();
        let mut town_weights = Vec::new();
        let mut total = 0u64;
        for (i, s) in STORES.iter().enumerate() {
            // Seven customers in ten live in the store's town, the rest in its suburbs.
            let share = if s.suburbs.is_empty() { 10 } else { 7 };
            total += u64::from(s.weight) * share;
            towns.push(Town {
                city: s.city,
                postcode: s.postcode,
                store: i,
            });
            town_weights.push(total);
            for &(city, postcode) in s.suburbs {
                total += u64::from(s.weight) * 3 / s.suburbs.len() as u64;
                towns.push(Town {
                    city,
                    postcode,
                    store: i,
                });
                town_weights.push(total);
            }
        }

        let mut rng = Rng::new(CATALOG_SEED);
        let mut products = Vec::new();
        let mut by_category = Vec::new();
        for (c, cat) in CATEGORIES.iter().enumerate() {
            let mut indices = Vec::with_capacity(PRODUCTS_PER_CATEGORY);
            for i in 0..PRODUCTS_PER_CATEGORY {
                let &(noun, min, max) = rng.pick(cat.items);
                let line = rng.pick(LINES);
                let variant = rng.pick(VARIANTS);
                let name = format!("{noun} {line} {variant}");
                let euros = u64::from(min) + rng.below(u64::from(max.saturating_sub(min)) + 1);
                let cents = *rng.pick(&[99u64, 99, 99, 90, 90, 49, 0]);
                let price_cents = (euros.max(1) - 1) as i64 * 100 + cents as i64;
                let sku = format!("{}-{}", cat.code, 10_001 + i);
                indices.push(products.len());
                products.push(Product {
                    slug: format!("{}-{}", slugify(&name), sku.to_ascii_lowercase()),
                    sku,
                    name,
                    category: c,
                    brand: cat.brands[rng.index(cat.brands.len())],
                    price_cents: price_cents.max(99),
                });
            }
            by_category.push(indices);
        }

        let monthly = (0..12)
            .map(|m| {
                CATEGORIES
                    .iter()
                    .map(|c| c.weight * u32::from(c.season[m]))
                    .collect()
            })
            .collect();

        Catalog {
            stores,
            towns,
            town_weights,
            categories: CATEGORIES,
            products,
            by_category,
            monthly,
        }
    }

    pub fn pick_town(&self, rng: &mut Rng) -> usize {
        rng.cumulative(&self.town_weights)
    }

    /// A product a shopper looks at in the given month (0 = January).
    /// Returns an index into `products`.
    pub fn pick_product(&self, rng: &mut Rng, month: usize) -> usize {
        let category = rng.weighted(&self.monthly[month.min(11)]);
        self.pick_in_category(rng, category)
    }

    /// Another product of the same category, as shoppers compare; an index into `products`.
    pub fn pick_in_category(&self, rng: &mut Rng, category: usize) -> usize {
        let list = &self.by_category[category.min(self.by_category.len() - 1)];
        list[rng.skewed(list.len())]
    }
}

impl Catalog {
    /// `products.csv`: sku,name,category,brand,price.
    pub fn products_csv(&self) -> String {
        let mut out = String::from("sku,name,category,brand,price\n");
        for p in &self.products {
            let price = Euros(p.price_cents).to_string();
            let category = self.categories[p.category].name;
            csv_record(
                &mut out,
                [p.sku.as_str(), &p.name, category, p.brand, &price],
            );
        }
        out
    }

    /// `stores.csv`: store_id,name,city,postcode,latitude,longitude,opening_hours.
    pub fn stores_csv(&self) -> String {
        let mut out =
            String::from("store_id,name,city,postcode,latitude,longitude,opening_hours\n");
        for s in &self.stores {
            let (lat, lon) = (format!("{:.4}", s.latitude), format!("{:.4}", s.longitude));
            csv_record(
                &mut out,
                [
                    s.id.as_str(),
                    s.name,
                    s.city,
                    s.postcode,
                    &lat,
                    &lon,
                    s.opening_hours,
                ],
            );
        }
        out
    }
}

/// A URL path segment from a product name ("Lampe Oslo laiton" → "lampe-oslo-laiton").
fn slugify(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for word in name.split(|c: char| c.is_whitespace() || c == '\'' || c == '-' || c == ',') {
        let letters: String = super::names::strip_accents(word)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if !letters.is_empty() {
            if !out.is_empty() {
                out.push('-');
            }
            out.push_str(&letters);
        }
    }
    out
}

struct StoreSpec {
    name: &'static str,
    city: &'static str,
    postcode: &'static str,
    latitude: f64,
    longitude: f64,
    hours: &'static str,
    /// Relative size of the customer base (roughly the metro population).
    weight: u32,
    suburbs: &'static [(&'static str, &'static str)],
}

const MO_SA: &str = "Mo-Sa 09:00-20:00";
const MO_SA_SU: &str = "Mo-Sa 09:00-19:30; Su 09:30-12:30";
const LATE: &str = "Mo-Fr 10:00-20:00; Sa 09:00-20:00";
const CITY: &str = "Mo-Sa 09:30-20:30; Su 10:00-19:00";

/// A row of the store table (a function keeps the 40 rows on one line each).
#[allow(clippy::too_many_arguments)]
const fn store(
    name: &'static str,
    city: &'static str,
    postcode: &'static str,
    latitude: f64,
    longitude: f64,
    hours: &'static str,
    weight: u32,
    suburbs: &'static [(&'static str, &'static str)],
) -> StoreSpec {
    StoreSpec {
        name,
        city,
        postcode,
        latitude,
        longitude,
        hours,
        weight,
        suburbs,
    }
}

#[rustfmt::skip]
const STORES: &[StoreSpec] = &[
    store("Maison Lumière Paris Bercy", "Paris", "75012", 48.8400, 2.3880, CITY, 60, &[("Vincennes", "94300"), ("Montreuil", "93100"), ("Ivry-sur-Seine", "94200")]),
    store("Maison Lumière Boulogne", "Boulogne-Billancourt", "92100", 48.8397, 2.2399, CITY, 30, &[("Issy-les-Moulineaux", "92130"), ("Sèvres", "92310")]),
    store("Maison Lumière Saint-Denis", "Saint-Denis", "93200", 48.9362, 2.3574, MO_SA, 25, &[("Aubervilliers", "93300"), ("Saint-Ouen-sur-Seine", "93400")]),
    store("Maison Lumière Créteil", "Créteil", "94000", 48.7904, 2.4556, MO_SA_SU, 25, &[("Maisons-Alfort", "94700"), ("Saint-Maur-des-Fossés", "94100")]),
    store("Maison Lumière Versailles", "Versailles", "78000", 48.8049, 2.1204, MO_SA_SU, 22, &[("Le Chesnay-Rocquencourt", "78150")]),
    store("Maison Lumière Lyon Part-Dieu", "Lyon", "69003", 45.7640, 4.8357, CITY, 40, &[("Villeurbanne", "69100"), ("Vénissieux", "69200"), ("Caluire-et-Cuire", "69300")]),
    store("Maison Lumière Marseille Prado", "Marseille", "13008", 43.2965, 5.3698, MO_SA, 35, &[("Aubagne", "13400")]),
    store("Maison Lumière Toulouse", "Toulouse", "31000", 43.6047, 1.4442, MO_SA, 30, &[("Blagnac", "31700"), ("Colomiers", "31770")]),
    store("Maison Lumière Nice", "Nice", "06000", 43.7102, 7.2620, MO_SA_SU, 22, &[("Cagnes-sur-Mer", "06800"), ("Saint-Laurent-du-Var", "06700")]),
    store("Maison Lumière Nantes", "Nantes", "44000", 47.2184, -1.5536, MO_SA, 25, &[("Rezé", "44400"), ("Saint-Herblain", "44800")]),
    store("Maison Lumière Strasbourg", "Strasbourg", "67000", 48.5734, 7.7521, LATE, 20, &[("Schiltigheim", "67300"), ("Illkirch-Graffenstaden", "67400")]),
    store("Maison Lumière Montpellier", "Montpellier", "34000", 43.6108, 3.8767, MO_SA, 20, &[("Lattes", "34970"), ("Castelnau-le-Lez", "34170")]),
    store("Maison Lumière Bordeaux", "Bordeaux", "33000", 44.8378, -0.5792, MO_SA, 28, &[("Mérignac", "33700"), ("Pessac", "33600"), ("Talence", "33400")]),
    store("Maison Lumière Lille", "Lille", "59000", 50.6292, 3.0573, LATE, 28, &[("Roubaix", "59100"), ("Tourcoing", "59200"), ("Villeneuve-d'Ascq", "59650")]),
    store("Maison Lumière Rennes", "Rennes", "35000", 48.1173, -1.6778, MO_SA, 18, &[("Cesson-Sévigné", "35510")]),
    store("Maison Lumière Reims", "Reims", "51100", 49.2583, 4.0317, MO_SA, 12, &[]),
    store("Maison Lumière Saint-Étienne", "Saint-Étienne", "42000", 45.4397, 4.3872, MO_SA, 12, &[("Saint-Chamond", "42400")]),
    store("Maison Lumière Toulon", "Toulon", "83000", 43.1242, 5.9280, MO_SA_SU, 14, &[("La Seyne-sur-Mer", "83500"), ("Hyères", "83400")]),
    store("Maison Lumière Le Havre", "Le Havre", "76600", 49.4944, 0.1079, MO_SA, 10, &[]),
    store("Maison Lumière Grenoble", "Grenoble", "38000", 45.1885, 5.7245, MO_SA, 15, &[("Échirolles", "38130"), ("Saint-Martin-d'Hères", "38400")]),
    store("Maison Lumière Dijon", "Dijon", "21000", 47.3220, 5.0415, MO_SA, 10, &[("Chenôve", "21300")]),
    store("Maison Lumière Angers", "Angers", "49000", 47.4784, -0.5632, MO_SA, 10, &[]),
    store("Maison Lumière Nîmes", "Nîmes", "30000", 43.8367, 4.3601, MO_SA, 9, &[]),
    store("Maison Lumière Clermont-Ferrand", "Clermont-Ferrand", "63000", 45.7772, 3.0870, MO_SA, 10, &[("Chamalières", "63400")]),
    store("Maison Lumière Aix-en-Provence", "Aix-en-Provence", "13100", 43.5297, 5.4474, MO_SA_SU, 12, &[]),
    store("Maison Lumière Le Mans", "Le Mans", "72000", 48.0061, 0.1996, MO_SA, 8, &[]),
    store("Maison Lumière Brest", "Brest", "29200", 48.3904, -4.4861, MO_SA, 8, &[("Guipavas", "29490")]),
    store("Maison Lumière Tours", "Tours", "37000", 47.3941, 0.6848, MO_SA, 9, &[("Joué-lès-Tours", "37300")]),
    store("Maison Lumière Amiens", "Amiens", "80000", 49.8941, 2.2958, MO_SA, 8, &[]),
    store("Maison Lumière Limoges", "Limoges", "87000", 45.8336, 1.2611, MO_SA, 7, &[]),
    store("Maison Lumière Annecy", "Annecy", "74000", 45.8992, 6.1294, MO_SA_SU, 8, &[("Annecy-le-Vieux", "74940")]),
    store("Maison Lumière Perpignan", "Perpignan", "66000", 42.6887, 2.8948, MO_SA, 8, &[]),
    store("Maison Lumière Metz", "Metz", "57000", 49.1193, 6.1757, LATE, 9, &[("Montigny-lès-Metz", "57950")]),
    store("Maison Lumière Besançon", "Besançon", "25000", 47.2378, 6.0241, MO_SA, 7, &[]),
    store("Maison Lumière Orléans", "Orléans", "45000", 47.9030, 1.9093, MO_SA, 9, &[("Olivet", "45160")]),
    store("Maison Lumière Rouen", "Rouen", "76000", 49.4432, 1.0999, MO_SA, 11, &[("Sotteville-lès-Rouen", "76300")]),
    store("Maison Lumière Caen", "Caen", "14000", 49.1829, -0.3707, MO_SA, 9, &[("Hérouville-Saint-Clair", "14200")]),
    store("Maison Lumière Nancy", "Nancy", "54000", 48.6921, 6.1844, LATE, 9, &[("Vandœuvre-lès-Nancy", "54500")]),
    store("Maison Lumière Avignon", "Avignon", "84000", 43.9493, 4.8055, MO_SA_SU, 8, &[("Le Pontet", "84130")]),
    store("Maison Lumière La Rochelle", "La Rochelle", "17000", 46.1603, -1.1511, MO_SA_SU, 7, &[("Aytré", "17440")]),
];

/// Collection names that make product names read like a real catalogue.
#[rustfmt::skip]
const LINES: &[&str] = &[
    "Oslo", "Provence", "Capri", "Lina", "Bergen", "Riviera", "Atelier", "Sienne", "Hanoï", "Calvi",
    "Nordic", "Lubéron", "Biarritz", "Kyoto", "Santorin", "Camargue", "Alba", "Milo", "Iris",
    "Cosy", "Jade", "Louvre", "Ombre", "Écume",
];

#[rustfmt::skip]
const VARIANTS: &[&str] = &[
    "blanc", "noir", "anthracite", "gris clair", "vert sauge", "terracotta", "naturel", "bleu nuit",
    "beige", "laiton", "chêne clair", "taupe", "rouge brique", "moutarde", "S", "M", "L", "XL",
    "40 cm", "60 cm", "80 cm", "120 cm", "lot de 2", "lot de 4",
];

#[rustfmt::skip]
const CATEGORIES: &[Category] = &[
    Category { name: "Garden", slug: "jardin", title: "Jardin", code: "GAR", weight: 14,
        season: [30, 40, 80, 100, 100, 85, 60, 45, 50, 40, 25, 20],
        items: &[("Tondeuse électrique", 129, 399), ("Tuyau d'arrosage 25 m", 19, 59), ("Sécateur", 9, 39),
                 ("Jardinière", 12, 69), ("Pot en terre cuite", 6, 49), ("Râteau", 9, 29), ("Bêche", 14, 39),
                 ("Arrosoir 10 L", 8, 25), ("Serre de jardin", 89, 499), ("Composteur", 39, 129),
                 ("Taille-haie sans fil", 69, 229), ("Terreau universel 40 L", 5, 14)],
        brands: &["Maison Lumière", "Atelier Verdure", "Jardin d'Éole"] },
    Category { name: "Barbecue", slug: "barbecue", title: "Barbecue & plancha", code: "BBQ", weight: 6,
        season: [10, 15, 35, 70, 100, 100, 90, 60, 25, 10, 10, 15],
        items: &[("Barbecue charbon", 59, 349), ("Barbecue gaz 3 feux", 249, 899), ("Plancha électrique", 89, 299),
                 ("Housse de barbecue", 15, 49), ("Pince inox", 8, 24), ("Charbon de bois 10 kg", 9, 19),
                 ("Kamado céramique", 499, 1299), ("Grille de cuisson", 19, 59)],
        brands: &["Braise & Co", "Maison Lumière", "Flamme Sud"] },
    Category { name: "Lighting", slug: "luminaires", title: "Luminaires", code: "LUM", weight: 11,
        season: [90, 80, 60, 50, 40, 35, 35, 45, 70, 90, 100, 100],
        items: &[("Lampadaire", 49, 249), ("Lampe de chevet", 19, 89), ("Suspension", 29, 199),
                 ("Applique murale", 19, 99), ("Guirlande lumineuse", 9, 39), ("Ampoule LED E27", 3, 12),
                 ("Lampe solaire", 9, 49), ("Lampe de bureau", 25, 119)],
        brands: &["Lueur", "Maison Lumière", "Nordlys"] },
    Category { name: "Kitchen", slug: "cuisine", title: "Cuisine", code: "CUI", weight: 13,
        season: [70, 65, 60, 60, 60, 60, 60, 65, 70, 80, 95, 100],
        items: &[("Poêle 28 cm", 19, 79), ("Cocotte en fonte", 49, 229), ("Service de table 18 pièces", 39, 149),
                 ("Verres à vin", 12, 49), ("Planche à découper", 9, 39), ("Couteau de chef", 19, 129),
                 ("Bouilloire", 25, 89), ("Boîtes de conservation", 9, 35), ("Moule à gâteau", 7, 29)],
        brands: &["Cuisine d'Ici", "Maison Lumière", "Fonte & Fer"] },
    Category { name: "Furniture", slug: "mobilier", title: "Mobilier", code: "MOB", weight: 9,
        season: [70, 70, 75, 80, 80, 75, 70, 75, 85, 80, 75, 70],
        items: &[("Canapé 3 places", 399, 1499), ("Fauteuil", 149, 599), ("Table basse", 79, 349),
                 ("Table à manger", 199, 999), ("Chaise", 39, 149), ("Étagère", 49, 249),
                 ("Buffet", 249, 899), ("Tabouret de bar", 39, 119), ("Console", 89, 299)],
        brands: &["Bois Doré", "Maison Lumière", "Atelier Nord"] },
    Category { name: "Decor", slug: "decoration", title: "Décoration", code: "DEC", weight: 14,
        season: [60, 55, 60, 65, 60, 55, 50, 55, 70, 85, 100, 100],
        items: &[("Vase", 9, 79), ("Miroir rond", 29, 199), ("Cadre photo", 5, 29), ("Bougie parfumée", 6, 29),
                 ("Coussin", 9, 39), ("Plante artificielle", 12, 89), ("Horloge murale", 19, 89),
                 ("Tapis", 39, 299), ("Photophore", 6, 25)],
        brands: &["Maison Lumière", "Lueur", "Petits Riens"] },
    Category { name: "Bathroom", slug: "salle-de-bain", title: "Salle de bain", code: "SDB", weight: 8,
        season: [80, 80, 80, 75, 70, 65, 60, 65, 75, 80, 75, 70],
        items: &[("Meuble vasque", 199, 899), ("Colonne de salle de bain", 89, 299), ("Miroir lumineux", 59, 249),
                 ("Tapis de bain", 9, 35), ("Porte-serviettes", 19, 79), ("Pommeau de douche", 15, 69),
                 ("Rideau de douche", 9, 29)],
        brands: &["Maison Lumière", "Eau Claire"] },
    Category { name: "Tools", slug: "outillage", title: "Outillage", code: "OUT", weight: 9,
        season: [60, 65, 85, 100, 95, 80, 70, 70, 80, 75, 65, 70],
        items: &[("Perceuse-visseuse 18 V", 59, 229), ("Coffret d'embouts", 12, 49), ("Niveau à bulle", 8, 39),
                 ("Escabeau 5 marches", 39, 129), ("Scie sauteuse", 49, 179), ("Mètre ruban 5 m", 5, 19),
                 ("Boîte à outils", 15, 69), ("Ponceuse", 39, 149)],
        brands: &["Outil Pro", "Maison Lumière", "Établi"] },
    Category { name: "Textiles", slug: "linge-de-maison", title: "Linge de maison", code: "TEX", weight: 10,
        season: [85, 70, 65, 60, 55, 55, 55, 60, 75, 90, 100, 100],
        items: &[("Parure de lit 240 x 220", 39, 129), ("Plaid", 19, 69), ("Rideau occultant", 19, 59),
                 ("Drap housse", 12, 39), ("Serviette de bain", 7, 29), ("Nappe", 15, 49),
                 ("Couette 4 saisons", 49, 179)],
        brands: &["Lin & Laine", "Maison Lumière"] },
    Category { name: "Outdoor", slug: "plein-air", title: "Plein air & terrasse", code: "EXT", weight: 6,
        season: [15, 20, 45, 80, 100, 100, 100, 80, 45, 25, 15, 15],
        items: &[("Salon de jardin 4 places", 299, 1299), ("Parasol déporté 3 x 3 m", 99, 399),
                 ("Bain de soleil", 59, 249), ("Hamac", 29, 99), ("Transat pliant", 25, 79),
                 ("Voile d'ombrage", 19, 79), ("Brasero", 79, 299), ("Coussin d'extérieur", 12, 39)],
        brands: &["Plein Air", "Maison Lumière", "Terrasse & Co"] },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_fixed_and_complete() {
        let a = Catalog::new();
        let b = Catalog::new();
        assert_eq!(a.stores.len(), 40);
        assert_eq!(a.stores[39].id, "S40");
        assert_eq!(a.products.len(), 2000);
        assert!(
            a.products
                .iter()
                .zip(&b.products)
                .all(|(x, y)| x.name == y.name && x.price_cents == y.price_cents)
        );
        let skus: std::collections::HashSet<&str> =
            a.products.iter().map(|p| p.sku.as_str()).collect();
        assert_eq!(skus.len(), 2000);
        assert!(a.products.iter().all(|p| p.price_cents > 0));
        assert_eq!(
            slugify("Parasol déporté 3 x 3 m"),
            "parasol-deporte-3-x-3-m"
        );
    }
}
