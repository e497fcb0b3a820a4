package org.fhirspine.testserver;

import ca.uhn.fhir.batch2.api.IJobMaintenanceService;
import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.batch2.maintenance.JobMaintenanceServiceImpl;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.JpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.search.HapiHSearchAnalysisConfigurers;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import jakarta.annotation.PostConstruct;
import jakarta.persistence.EntityManagerFactory;
import org.apache.commons.dbcp2.BasicDataSource;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.WorkerContextValidationSupportAdapter;
import org.springframework.beans.factory.annotation.Autowired;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;
import org.springframework.transaction.annotation.EnableTransactionManagement;

import java.time.Duration;
import java.util.Properties;

/**
 * The JPA side of the test server: HAPI's R4 JPA configuration plus the beans HAPI expects
 * the host application to supply (data source, entity manager factory, transaction manager,
 * storage/partition/subscription settings) and the Batch2 job framework with HAPI's job
 * definitions (among them Bulk Data export).
 *
 * <p>Hibernate Search runs with a Lucene backend whose indexes live in the JVM heap
 * ({@code local-heap}): HAPI's terminology service needs it for {@code CodeSystem/$subsumes}
 * and for {@code ValueSet/$expand} / {@code $validate-code} with filters such as
 * {@code concept is-a X}. The indexes are as ephemeral as the H2 database.
 */
@Configuration
@EnableTransactionManagement
@Import({
	JpaR4Config.class,
	HapiJpaConfig.class,
	HapiJpaServerConfig.FastBatch2Maintenance.class,
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	SubscriptionChannelConfig.class,
	ThreadPoolFactoryConfig.class
})
public class HapiJpaServerConfig {

	/** How often the Batch2 maintenance pass runs (HAPI's default is once a minute). */
	static final long BATCH2_MAINTENANCE_MILLIS = 500;

	@Bean
	public static JpaStorageSettings storageSettings(
			@Value("${fhirspine.client-id-strategy:ALPHANUMERIC}") JpaStorageSettings.ClientIdStrategyEnum theClientIdStrategy) {
		JpaStorageSettings settings = new JpaStorageSettings();
		// Never answer a search from a cached earlier result: a test that writes and then
		// searches again must see its own writes (HAPI's default reuses results for 60 s).
		settings.setReuseCachedSearchResultsForMillis(null);
		// Client-assigned ids on PUT / conditional create ("Patient/abc").
		settings.setResourceClientIdStrategy(theClientIdStrategy);
		if (theClientIdStrategy == JpaStorageSettings.ClientIdStrategyEnum.ANY) {
			settings.setResourceServerIdStrategy(JpaStorageSettings.IdStrategyEnum.UUID);
		}
		// Bulk export: run the jobs here, never hand back an older job's files for a repeated request.
		settings.setEnableTaskBulkExportJobExecution(true);
		settings.setEnableBulkExportJobReuse(false);
		settings.setJobFastTrackingEnabled(true);
		// Let tests clean up after themselves.
		settings.setExpungeEnabled(true);
		settings.setDeleteExpungeEnabled(true);
		settings.setAllowMultipleDelete(true);
		// Terminology, deterministic for tests: store the concepts of a CodeSystem in the same
		// transaction as the CodeSystem however many there are (HAPI defers code systems of more
		// than 100 concepts to a background job that runs every few seconds), and never
		// pre-expand ValueSets in the background (a scheduled task, every 10 minutes by default):
		// $expand and $validate-code always expand from the stored concepts at request time.
		settings.setDeferIndexingForCodesystemsOfSize(Integer.MAX_VALUE);
		settings.setEnableTaskPreExpandValueSets(false);
		// ValueSet/$validate-code on a ValueSet that is not pre-expanded validates in memory
		// against the CodeSystem resource the validation support chain finds first. By default
		// that is HAPI's built-in stub for well-known systems (http://snomed.info/sct has
		// content = not-present, so filters fail with HAPI-2646); stored resources go first here.
		settings.setAllowDatabaseValidationOverride(true);
		return settings;
	}

	/**
	 * No caching in the validation support chain (HAPI caches fetched CodeSystems / ValueSets
	 * and code validations for 10 minutes and does not invalidate on a CodeSystem PUT): an
	 * answer must reflect the terminology stored so far, whatever was asked before.
	 */
	@Bean
	public ValidationSupportChain.CacheConfiguration validationSupportChainCacheConfiguration() {
		return ValidationSupportChain.CacheConfiguration.disabled();
	}

	/**
	 * Replaces HAPI's {@code myJpaValidationSupportChain} (same name, so this definition wins
	 * over {@code JpaConfig}'s) by one whose {@code fetchAllStructureDefinitions()} works without
	 * the cache: HAPI 8.8.0's answers an empty list then, and {@code $validate} fails for every
	 * resource (see {@link UncachedJpaValidationSupportChain}).
	 */
	@Bean(name = JpaConfig.JPA_VALIDATION_SUPPORT_CHAIN)
	@Primary
	public IValidationSupport jpaValidationSupportChain(
			FhirContext theFhirContext,
			ValidationSupportChain.CacheConfiguration theCacheConfiguration,
			WorkerContextValidationSupportAdapter theWorkerContextValidationSupportAdapter) {
		return new UncachedJpaValidationSupportChain(
				theFhirContext, theCacheConfiguration, theWorkerContextValidationSupportAdapter);
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	@Bean
	public SubscriptionSettings subscriptionSettings() {
		return new SubscriptionSettings();
	}

	@Bean(destroyMethod = "close")
	public BasicDataSource dataSource() {
		BasicDataSource ds = new BasicDataSource();
		ds.setDriver(new org.h2.Driver());
		// A private in-memory database that lives as long as the JVM (DB_CLOSE_DELAY=-1 keeps it
		// even when the pool closes its last connection).
		ds.setUrl("jdbc:h2:mem:fhirspine_hapi;DB_CLOSE_DELAY=-1");
		ds.setUsername("sa");
		ds.setPassword("");
		ds.setMaxTotal(20);
		ds.setMaxWait(Duration.ofSeconds(30));
		return ds;
	}

	@Bean
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory theBeanFactory, FhirContext theFhirContext, JpaStorageSettings theSettings) {
		LocalContainerEntityManagerFactoryBean factory =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(theBeanFactory, theFhirContext, theSettings);
		factory.setPersistenceUnitName("HAPI_PU");
		factory.setDataSource(dataSource());
		Properties props = new Properties();
		props.put("hibernate.dialect", HapiFhirH2Dialect.class.getName());
		props.put("hibernate.hbm2ddl.auto", "update");
		props.put("hibernate.format_sql", "false");
		props.put("hibernate.show_sql", "false");
		props.put("hibernate.jdbc.batch_size", "20");
		props.put("hibernate.cache.use_query_cache", "false");
		props.put("hibernate.cache.use_second_level_cache", "false");
		props.put("hibernate.cache.use_structured_entries", "false");
		props.put("hibernate.cache.use_minimal_puts", "false");
		// Hibernate Search with Lucene indexes in the heap: the terminology service searches the
		// concepts of stored CodeSystems with it (is-a / descendant-of filters, $subsumes).
		// Resource searches stay plain SQL (HAPI's full-text / advanced indexing stay off).
		props.put("hibernate.search.enabled", "true");
		props.put("hibernate.search.backend.type", "lucene");
		props.put("hibernate.search.backend.directory.type", "local-heap");
		props.put("hibernate.search.backend.lucene_version", "LATEST");
		props.put("hibernate.search.backend.analysis.configurer",
				HapiHSearchAnalysisConfigurers.HapiLuceneAnalysisConfigurer.class.getName());
		// A write returns only once its index changes are visible to searches, so a test may
		// query a CodeSystem right after its PUT.
		props.put("hibernate.search.indexing.plan.synchronization.strategy", "read-sync");
		factory.setJpaProperties(props);
		return factory;
	}

	@Bean
	@Primary
	public JpaTransactionManager transactionManager(EntityManagerFactory theEntityManagerFactory) {
		JpaTransactionManager tm = new JpaTransactionManager();
		tm.setEntityManagerFactory(theEntityManagerFactory);
		return tm;
	}

	/** Runs Batch2 maintenance often so that an $export finishes within seconds. */
	@Configuration
	public static class FastBatch2Maintenance {
		@Autowired
		private IJobMaintenanceService myJobMaintenanceService;

		@PostConstruct
		void fastMaintenance() {
			if (myJobMaintenanceService instanceof JobMaintenanceServiceImpl impl) {
				impl.setScheduledJobFrequencyMillis(BATCH2_MAINTENANCE_MILLIS);
			}
		}
	}
}
